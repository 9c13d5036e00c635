//! The wire check against the decoder it stands in for: on every synthetic
//! record and on random damage to them, `light` vouches only for bodies the
//! full decode accepts, and reads exactly what the decode gives.

use proptest::prelude::*;

use super::*;
use crate::cli::synth::{Generator, SynthConfig};
use crate::record::decode::{unframe, DecodeLimits};
use crate::record::summary::Summary;

/// Bodies of the synthetic mix (every kind, batches included).
fn bodies(n: usize) -> Vec<Vec<u8>> {
    Generator::new(SynthConfig::default())
        .take(n)
        .map(|r| {
            let u = unframe(Some(&r.value), &DecodeLimits::default()).unwrap();
            u.body().to_vec()
        })
        .collect()
}

/// The full decode's verdict on a body: its summary when accepted.
fn decoded(body: &[u8]) -> Option<Summary> {
    let mut framed = vec![0u8];
    framed.extend_from_slice(body);
    let u = unframe(Some(&framed), &DecodeLimits::default()).ok()?;
    u.decode(&DecodeLimits::default())
        .ok()
        .map(|d| Summary::of(&d))
}

/// `light` never vouches for what the decoder refuses, and reads what it reads.
fn agrees(body: &[u8]) -> Result<(), TestCaseError> {
    if let Some(l) = light(body) {
        prop_assert!(valid(body, ROOT, RECURSION_LIMIT));
        let full = decoded(body);
        prop_assert!(
            full.is_some(),
            "vouched for a body the decoder refuses: {body:02x?}"
        );
        prop_assert_eq!(Some(Summary::of_light(&l)), full);
    }
    // The check alone is exact both ways (prost is the reference).
    let prost_ok = <crate::proto::DashStreamMessage as prost::Message>::decode(body).is_ok();
    prop_assert_eq!(
        valid(body, ROOT, RECURSION_LIMIT),
        prost_ok,
        "{:02x?}",
        body
    );
    Ok(())
}

#[test]
fn every_synthetic_record_but_batches_is_read_on_the_wire() {
    let mut light_n = 0;
    for b in bodies(2_000) {
        agrees(&b).unwrap();
        let full = decoded(&b).expect("synthetic records decode");
        match light(&b) {
            Some(_) => light_n += 1,
            None => assert_eq!(
                full.kind,
                MessageKind::EventBatch,
                "only batches go the long way"
            ),
        }
    }
    assert!(light_n > 1_500, "{light_n}");
}

#[test]
fn unusual_shapes_are_left_to_the_decoder() {
    // Two bodies (the decoder's merge rules), a header twice, no body.
    let event = |h: &[u8]| {
        let mut e = vec![0x0a, h.len() as u8];
        e.extend_from_slice(h);
        e
    };
    let header = [0x22, 0x01, b't', 0x28, 0x07]; // thread "t", sequence 7
    let one = {
        let e = event(&header);
        let mut b = vec![0x0a, e.len() as u8];
        b.extend_from_slice(&e);
        b
    };
    let l = light(&one).unwrap();
    assert_eq!((l.thread, l.sequence), ("t", 7));
    let twice: Vec<u8> = [one.clone(), one.clone()].concat();
    assert_eq!(light(&twice), None);
    assert!(decoded(&twice).is_some());
    let two_headers = {
        let e = [event(&header), event(&header)].concat();
        let mut b = vec![0x0a, e.len() as u8];
        b.extend_from_slice(&e);
        b
    };
    assert_eq!(light(&two_headers), None);
    assert_eq!(light(&[]), None, "no body: the decoder says missing_body");
    // A future schema version and an over-long id: the decoder refuses them.
    let future = event(&[0x48, 0x02]);
    let mut b = vec![0x0a, future.len() as u8];
    b.extend_from_slice(&future);
    assert_eq!(light(&b), None);
    assert!(decoded(&b).is_none());
}

#[test]
fn deep_nesting_stops_where_the_decoder_stops() {
    // AttributeValue.array_value(6) -> AttributeArray.values(1) -> AttributeValue ...
    let mut verdicts = Vec::new();
    // int_value (field 2) = 1; or an array holding only an unknown field 15
    // (a level where the decoder refuses to skip once the limit is reached).
    for inner in [&[0x10u8, 0x01][..], &[0x32, 0x02, 0x78, 0x01]] {
        for depth in [40usize, 47, 48, 49, 50, 51, 60] {
            // `inner` inside `depth` arrays.
            let mut v: Vec<u8> = inner.to_vec();
            for _ in 0..depth {
                // AttributeValue { array_value: AttributeArray { values: [v] } }
                v = field(0x32, &field(0x0a, &v));
            }
            // Event.attributes(4): entry { key(1) = "k", value(2) = v }
            let entry = [&[0x0a, 0x01, b'k'][..], &field(0x12, &v)].concat();
            let body = field(0x0a, &field(0x22, &entry));
            agrees(&body).unwrap();
            verdicts.push(valid(&body, ROOT, RECURSION_LIMIT));
        }
    }
    assert_eq!(verdicts.first(), Some(&true));
    assert_eq!(
        verdicts.last(),
        Some(&false),
        "the limit is reached: {verdicts:?}"
    );
}

/// A length-delimited field: its key byte, the length, the bytes.
fn field(key: u8, bytes: &[u8]) -> Vec<u8> {
    [&[key][..], &varint_bytes(bytes.len() as u64), bytes].concat()
}

fn varint_bytes(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// One kind of damage to a body.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, to: u8 },
    Cut { at: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, n: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, to)| Damage::Flip { at, to }),
        any::<usize>().prop_map(|at| Damage::Cut { at }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(at, bytes)| Damage::Insert { at, bytes }),
        (any::<usize>(), 1usize..4).prop_map(|(at, n)| Damage::Remove { at, n }),
    ]
}

fn apply(mut b: Vec<u8>, d: &Damage) -> Vec<u8> {
    if b.is_empty() {
        return b;
    }
    match d {
        Damage::Flip { at, to } => {
            let i = at % b.len();
            b[i] = *to;
        }
        Damage::Cut { at } => b.truncate(at % b.len()),
        Damage::Insert { at, bytes } => {
            let i = at % (b.len() + 1);
            b.splice(i..i, bytes.iter().copied());
        }
        Damage::Remove { at, n } => {
            let i = at % b.len();
            let end = (i + n).min(b.len());
            b.drain(i..end);
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn damaged_records_get_the_decoders_verdict(
        pick in 0usize..64,
        damages in proptest::collection::vec(damage(), 1..4),
    ) {
        let all = bodies(64);
        let body = damages.iter().fold(all[pick].clone(), apply);
        agrees(&body)?;
    }

    #[test]
    fn arbitrary_bytes_get_the_decoders_verdict(body in proptest::collection::vec(any::<u8>(), 0..64)) {
        agrees(&body)?;
    }
}
