//! Several instances in one consumer group behind a real load balancer
//! (Debian's nginx on loopback, round robin): every client sees every
//! partition whichever instance it lands on; each record's side effects
//! (DLQ records, counters) happen once, on the partition's owner; a client
//! resumes on another instance without a hole or a duplicate; `kill -9` of
//! an owner moves its partitions to the survivors, whose clients lose
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use kafka_ws_bridge::{Generator, SynthConfig};
use kwb_testkit::process::Logged;

/// nginx in front of bridges, on a free loopback port.
pub struct Lb {
    pub port: u16,
    _proc: Logged,
    pub dir: PathBuf,
}

fn nginx_bin() -> String {
    for c in ["nginx", "/usr/sbin/nginx"] {
        if Command::new(c).arg("-v").output().is_ok() {
            return c.to_string();
        }
    }
    panic!("nginx is not installed: run bash scripts/install-deps.sh (Debian package nginx-light)");
}

impl Lb {
    /// Round robin over `ports`, with WebSocket upgrades; a bridge that does
    /// not answer is skipped for the next one.
    pub async fn start(ports: &[u16]) -> Lb {
        let port = free_port();
        let dir = log_dir().join(unique("nginx"));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let servers: String = ports
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n"))
            .collect();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
               upstream bridges {{\n{servers}  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://bridges;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n\
                 proxy_set_header Connection $connection_upgrade;\n      proxy_set_header X-Forwarded-For $remote_addr;\n\
                 proxy_read_timeout 1h;\n      proxy_next_upstream error timeout http_502 http_503;\n    }}\n  }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let mut cmd = Command::new(nginx_bin());
        cmd.arg("-p").arg(&dir).arg("-c").arg(&conf_path);
        let proc = Logged::spawn(&mut cmd, &dir.join("nginx.out")).expect("spawn nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Lb {
            port,
            _proc: proc,
            dir,
        }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws{query}", self.port)
    }
}

/// `n` instances of one group (the same `KAFKA_GROUP_ID`) with one Redis,
/// each ready (owning partitions, or following them from Redis).
pub async fn instances(topic: &str, n: usize, env: &[(&str, &str)]) -> Vec<Bridge> {
    let bridges = spawn_instances(topic, n, env);
    for b in &bridges {
        b.wait_ready(Duration::from_secs(60)).await;
    }
    bridges
}

/// [`instances`] without waiting: an instance that owns no partition is
/// ready once Redis holds a partition it can follow.
pub fn spawn_instances(topic: &str, n: usize, env: &[(&str, &str)]) -> Vec<Bridge> {
    let redis = std::env::var("KWB_TEST_REDIS_URL").expect("KWB_TEST_REDIS_URL");
    let group = unique("grp");
    let mut all = env.to_vec();
    all.push(("REDIS_URL", &redis));
    (0..n).map(|_| Bridge::spawn(topic, &group, &all)).collect()
}

/// Waits until the group has settled: every partition owned by exactly one
/// instance.
pub async fn wait_owned(bridges: &[Bridge], partitions: usize) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut owned = 0;
        for b in bridges {
            owned += b.health().await["assigned_partitions"]
                .as_u64()
                .unwrap_or(0);
        }
        if owned == partitions as u64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions owned in all: {owned} of {partitions}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of every series of `name` across instances.
pub async fn summed(bridges: &[&Bridge], name: &str) -> f64 {
    let mut total = 0.0;
    for b in bridges {
        total += b
            .metrics()
            .await
            .iter()
            .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| *v)
            .sum::<f64>();
    }
    total
}

fn dlq_count(topic: &str) -> usize {
    let out = Command::new(bridge_bin())
        .args([
            "dlq",
            "inspect",
            "--kafka-brokers",
            &brokers(),
            "--kafka-topic",
            topic,
            "--format",
            "jsonl",
        ])
        .output()
        .expect("dlq inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Reads data frames until `want` are in, or nothing comes for `idle`:
/// how many times each (partition, offset) arrived.
async fn read_all(ws: &mut Ws, want: usize, idle: Duration) -> BTreeMap<(i32, i64), u32> {
    let mut seen = BTreeMap::new();
    while seen.len() < want {
        match next_frame(ws, idle).await {
            Some(Frame::Data {
                partition, offset, ..
            }) => *seen.entry((partition, offset)).or_insert(0) += 1,
            Some(Frame::Control(_)) => {}
            _ => break,
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_behind_nginx_deliver_every_partition_and_count_each_bad_record_once() {
    let topic = unique("multi");
    let dlq = format!("{topic}-dlq");
    create_topic(&topic, 3).await; // and {topic}-dlq
    let bridges = instances(&topic, 3, &[("KAFKA_DLQ_TOPIC", &dlq)]).await;
    wait_owned(&bridges, 3).await;
    let ports: Vec<u16> = bridges.iter().map(|b| b.port).collect();
    let lb = Lb::start(&ports).await;

    // Six clients through the load balancer: two on each instance.
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&lb.ws_url("?format=json")).await.0);
    }
    // Let their grace period pass: they join live delivery from here.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let good: Vec<_> = Generator::new(SynthConfig {
        threads: 20,
        ..Default::default()
    })
    .take(2000)
    .map(|r| (Some(r.key), r.value))
    .collect();
    let p = producer();
    produce(&p, &topic, &good[..1000]).await;
    let bad: Vec<_> = (0..10)
        .map(|i| (Some(format!("bad-{i}")), b"\xff\xfe not a record".to_vec()))
        .collect();
    produce(&p, &topic, &bad).await;
    produce(&p, &topic, &good[1000..]).await;

    for (i, ws) in clients.iter_mut().enumerate() {
        let seen = read_all(ws, 2000, Duration::from_secs(15)).await;
        let repeated = seen.values().filter(|n| **n > 1).count();
        assert_eq!(
            (seen.len(), repeated),
            (2000, 0),
            "client {i}: every good record once, from every partition"
        );
        let parts: BTreeSet<i32> = seen.keys().map(|(p, _)| *p).collect();
        assert_eq!(parts.len(), 3, "client {i}: {parts:?}");
    }

    // One DLQ record per bad record, whatever the number of instances.
    let deadline = Instant::now() + Duration::from_secs(20);
    while dlq_count(&topic) < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(dlq_count(&topic), 10, "one DLQ record per bad record");
    let refs: Vec<&Bridge> = bridges.iter().collect();
    assert_eq!(summed(&refs, "websocket_decode_errors_total").await, 10.0);
    assert_eq!(
        summed(&refs, "websocket_kafka_messages_total").await,
        2010.0
    );
    assert_eq!(
        summed(&refs, "websocket_dlq_sends_total").await,
        10.0,
        "summed across instances, counters equal the truth"
    );
    let followed = summed(&refs, "websocket_followed_records_total").await;
    assert!(
        followed >= 2.0 * 2010.0,
        "each instance follows the two partitions it does not own: {followed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_resumes_on_another_instance_and_survives_a_kill_9_of_an_owner() {
    let topic = unique("multi-kill");
    create_topic(&topic, 2).await;
    let mut bridges = instances(&topic, 2, &[]).await;
    wait_owned(&bridges, 2).await;
    let lb = Lb::start(&bridges.iter().map(|b| b.port).collect::<Vec<_>>()).await;
    let mut gen = Generator::new(SynthConfig {
        threads: 6,
        ..Default::default()
    });
    let mut batch = |n: usize| -> Vec<(Option<String>, Vec<u8>)> {
        gen.by_ref()
            .take(n)
            .map(|r| (Some(r.key), r.value))
            .collect()
    };
    let p = producer();

    // A client on one instance reads 300, leaves, and resumes through the
    // load balancer (the next connection goes to the other instance).
    produce(&p, &topic, &batch(300)).await;
    let (mut a, hello_a) = connect(&lb.ws_url("?format=json&resume=earliest")).await;
    let first = read_all(&mut a, 300, Duration::from_secs(15)).await;
    assert_eq!(first.len(), 300);
    drop(a);
    produce(&p, &topic, &batch(300)).await;
    let cursor: BTreeMap<i32, i64> = first.keys().fold(BTreeMap::new(), |mut m, (p, o)| {
        let e = m.entry(*p).or_insert(*o);
        *e = (*e).max(*o);
        m
    });
    let offs: Vec<String> = cursor.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    let (mut b, hello_b) = connect(&lb.ws_url(&format!(
        "?format=json&resume=cursor&last_offsets={}",
        offs.join(",")
    )))
    .await;
    assert_eq!(hello_a["resume_namespace"], hello_b["resume_namespace"]);
    let second = read_all(&mut b, 300, Duration::from_secs(15)).await;
    assert_eq!(second.len(), 300, "the 300 produced while away");
    assert!(
        second.keys().all(|k| !first.contains_key(k)) && second.values().all(|n| *n == 1),
        "no duplicate across instances"
    );

    // Two live clients, one per instance; then the owner of partition 0 is killed.
    let mut live = vec![b];
    live.push(connect(&lb.ws_url("?format=json")).await.0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    produce(&p, &topic, &batch(200)).await;
    for ws in live.iter_mut() {
        assert_eq!(read_all(ws, 200, Duration::from_secs(15)).await.len(), 200);
    }
    // Bad records before the kill: one DLQ record each; once their offsets are
    // committed (auto.commit.interval.ms, 5 s), a take-over does not read them again.
    let bad: Vec<_> = (0..6)
        .map(|i| (Some(format!("bad-{i}")), b"\xff\xfe not a record".to_vec()))
        .collect();
    produce(&p, &topic, &bad).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while dlq_count(&topic) < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(dlq_count(&topic), 6, "one DLQ record per bad record");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut owner = None;
    for (i, br) in bridges.iter().enumerate() {
        if br.health().await["assigned_partitions"].as_u64() == Some(1) && owner.is_none() {
            owner = Some(i);
        }
    }
    let victim = bridges.remove(owner.expect("an owner"));
    victim.signal("KILL");
    let survivor = &bridges[0];
    // The survivor's client (the one whose connection did not break) keeps reading.
    let mut kept = Vec::new();
    for mut ws in live {
        use futures_util::SinkExt;
        if ws
            .send(tokio_tungstenite::tungstenite::Message::Text(
                r#"{"type":"ping"}"#.into(),
            ))
            .await
            .is_ok()
            && matches!(next_frame(&mut ws, Duration::from_secs(2)).await, Some(Frame::Control(c)) if c["type"] == "pong")
        {
            kept.push(ws);
        }
    }
    assert_eq!(kept.len(), 1, "one client was on the survivor");
    produce(&p, &topic, &batch(400)).await;
    // The survivor takes over the dead owner's partition within the session timeout.
    wait_owned(std::slice::from_ref(survivor), 2).await;
    let got = read_all(&mut kept[0], 400, Duration::from_secs(30)).await;
    assert_eq!(
        got.len(),
        400,
        "nothing lost on the survivor across the takeover"
    );
    assert!(
        got.values().all(|n| *n == 1),
        "no duplicate on the survivor"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        dlq_count(&topic),
        6,
        "no DLQ duplicate: the bad records were committed before the owner died"
    );
}

/// Data frames' (thread, sequence) and control frame types, until `idle`.
async fn drain(ws: &mut Ws, idle: Duration) -> (Vec<(String, u64)>, Vec<String>) {
    let (frames, control) = collect(ws, usize::MAX, idle).await;
    let data = sequences(&frames);
    let kinds = control
        .iter()
        .filter_map(|c| c["type"].as_str().map(str::to_string))
        .collect();
    (data, kinds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_halt_on_the_owner_holds_the_thread_everywhere_and_one_release_at_another_instance_frees_it(
) {
    let topic = unique("multi-halt");
    create_topic(&topic, 1).await;
    let bridges = spawn_instances(&topic, 2, &[("GAP_POLICY", "halt")]);
    wait_owned(&bridges, 1).await;
    let p = producer();
    produce(&p, &topic, &[good("warmup", 1)]).await;
    for b in &bridges {
        b.wait_ready(Duration::from_secs(30)).await;
    }
    // Both ready: the owner consumes the partition, the other follows it from Redis.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (owner, other) = loop {
        let a = bridges[0].health().await;
        let b = bridges[1].health().await;
        if a["assigned_partitions"] == 1 && b["followed_partitions"] == 1 {
            break (&bridges[0], &bridges[1]);
        }
        if b["assigned_partitions"] == 1 && a["followed_partitions"] == 1 {
            break (&bridges[1], &bridges[0]);
        }
        assert!(Instant::now() < deadline, "{a} {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut on_owner, _) = connect(&owner.ws_url("?format=json&threads=a")).await;
    let (mut on_other, _) = connect(&other.ws_url("?format=json&threads=a")).await;
    let (mut b_on_owner, _) = connect(&owner.ws_url("?format=json&threads=b")).await;
    let (mut b_on_other, _) = connect(&other.ws_url("?format=json&threads=b")).await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    // a: 1 2 [gap] 5 6 7: the owner halts it and holds 5..7.
    let recs: Vec<_> = [1, 2, 5, 6, 7].iter().map(|s| good("a", *s)).collect();
    produce(&p, &topic, &recs).await;
    for (name, ws) in [("owner", &mut on_owner), ("other", &mut on_other)] {
        let (data, kinds) = drain(ws, Duration::from_secs(2)).await;
        let seqs: Vec<u64> = data.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, vec![1, 2], "{name}: held back after the gap");
        assert!(
            kinds.contains(&"thread_halted".to_string()),
            "{name}: {kinds:?}"
        );
    }
    let (code, body) = admin(other.port, "GET", "/admin/threads/halted")
        .await
        .expect("http");
    assert_eq!(code, 200);
    assert!(
        body.contains("\"thread_id\":\"a\""),
        "the other instance lists it: {body}"
    );

    // One release, at the instance that does not hold the thread.
    let (code, body) = admin(other.port, "POST", "/admin/threads/a/resume")
        .await
        .expect("http");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"released\":3"), "{body}");
    for (name, ws) in [("owner", &mut on_owner), ("other", &mut on_other)] {
        let (data, kinds) = drain(ws, Duration::from_secs(3)).await;
        let seqs: Vec<u64> = data.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, vec![5, 6, 7], "{name}: released in order");
        assert!(
            kinds.contains(&"thread_resumed".to_string()),
            "{name}: {kinds:?}"
        );
    }
    produce(&p, &topic, &[good("a", 8)]).await;
    for ws in [&mut on_owner, &mut on_other] {
        let (data, _) = drain(ws, Duration::from_secs(2)).await;
        assert_eq!(data, vec![("a".to_string(), 8)], "live again everywhere");
    }
    let (code, _) = admin(other.port, "POST", "/admin/threads/a/resume")
        .await
        .expect("http");
    assert_eq!(code, 404, "halted nowhere any more");

    // A halt every instance restored at a rebalance (a third instance joins): one
    // release at any instance reaches every one that holds the thread.
    let recs: Vec<_> = [1, 2, 5, 6, 7].iter().map(|s| good("b", *s)).collect();
    produce(&p, &topic, &recs).await;
    for ws in [&mut b_on_owner, &mut b_on_other] {
        let (data, _) = drain(ws, Duration::from_secs(2)).await;
        assert_eq!(data.iter().map(|(_, s)| *s).collect::<Vec<_>>(), vec![1, 2]);
    }
    let redis = std::env::var("KWB_TEST_REDIS_URL").expect("KWB_TEST_REDIS_URL");
    let third = Bridge::spawn(
        &topic,
        &owner.group,
        &[("GAP_POLICY", "halt"), ("REDIS_URL", redis.as_str())],
    );
    third.wait_ready(Duration::from_secs(30)).await;
    // Settled: the partition's (maybe new) owner holds b's records again, and
    // every instance restored the halt.
    let all = [owner, other, &third];
    let deadline = Instant::now() + Duration::from_secs(40);
    // The rebalance the third instance started has ended (it was assigned, if nothing).
    while !third.log_text().contains("partitions assigned") {
        assert!(Instant::now() < deadline, "the third instance never joined");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let mut holding = 0;
        for br in all {
            let h = br.health().await;
            if h["assigned_partitions"] == 1 && h["held_messages"] == 3 {
                holding += 1;
            }
        }
        if holding == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle with 3 instances"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, body) = admin(other.port, "POST", "/admin/threads/b/resume")
        .await
        .expect("http");
    assert_eq!(code, 200, "{body}");
    for (name, ws) in [("owner", &mut b_on_owner), ("other", &mut b_on_other)] {
        let (data, kinds) = drain(ws, Duration::from_secs(4)).await;
        let seqs: Vec<u64> = data.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            seqs,
            vec![5, 6, 7],
            "{name}: b released after the rebalance"
        );
        assert!(
            kinds.contains(&"thread_resumed".to_string()),
            "{name}: {kinds:?}"
        );
    }
    let (code, _) = admin(third.port, "POST", "/admin/threads/b/resume")
        .await
        .expect("http");
    assert_eq!(code, 404, "b halted nowhere any more");

    // A tenant's rate limit set at one instance applies at the other; cleared there, gone here.
    let (code, body) = crate::security::http_put_json(
        other.port,
        "/admin/tenants/acme/rate-limit",
        r#"{"messages_per_second": 5, "burst": 7}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"shared\":true"), "{body}");
    let limits = |port: u16| async move {
        let (_, b) = admin(port, "GET", "/admin/tenants/rate-limits")
            .await
            .expect("http");
        serde_json::from_str::<serde_json::Value>(&b).expect("json")["overrides"]["acme"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while limits(owner.port).await["burst"] != 7.0 {
        assert!(
            Instant::now() < deadline,
            "the owner never applied the override"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _) = admin(owner.port, "DELETE", "/admin/tenants/acme/rate-limit")
        .await
        .expect("http");
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !limits(other.port).await.is_null() {
        assert!(
            Instant::now() < deadline,
            "the other instance kept the cleared override"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
