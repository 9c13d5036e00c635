//! Resume requests, from the URL (`?resume=…&last_offsets=…`) or from the
//! first client message, parsed into a [`ResumeFrom`]. Every value is
//! bounded and checked; a refusal says what is wrong.

use std::collections::HashMap;

use crate::replay::ResumeFrom;

/// Most partitions one resume request may name.
pub(crate) const MAX_RESUME_PARTITIONS: usize = 1024;

impl ResumeFrom {
    /// From the `/ws` query: `None` when the client did not ask to resume.
    pub(crate) fn from_query(
        resume: Option<&str>,
        last_offsets: Option<&str>,
        max_partitions: usize,
    ) -> Result<Option<Self>, String> {
        match (resume, last_offsets) {
            (None, None) => Ok(None),
            (Some("earliest"), _) => Ok(Some(ResumeFrom::Earliest)),
            (Some("latest"), _) => Ok(Some(ResumeFrom::Latest)),
            (Some("cursor") | None, Some(raw)) => parse_offsets_param(raw, max_partitions)
                .map(|m| Some(ResumeFrom::Cursor(m)))
                .map_err(|e| format!("last_offsets: {e}")),
            (Some("cursor"), None) => Err("resume=cursor needs last_offsets=P:O,...".into()),
            (Some(_), _) => Err("resume must be cursor, earliest or latest".into()),
        }
    }

    /// From the `resume` client message.
    pub(crate) fn from_message(
        v: &serde_json::Value,
        max_partitions: usize,
    ) -> Result<Self, String> {
        parse_resume_message(v, max_partitions)
    }
}

/// Parses `0:12,1:40` (partition:last applied offset).
fn parse_offsets_param(s: &str, max: usize) -> Result<HashMap<i32, i64>, String> {
    let mut m = HashMap::new();
    for part in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let (p, o) = part
            .split_once(':')
            .ok_or_else(|| format!("'{part}' is not partition:offset"))?;
        let p: i32 = p
            .trim()
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| format!("'{p}' is not a partition"))?;
        let o: i64 = o
            .trim()
            .parse()
            .ok()
            .filter(|o| *o >= -1)
            .ok_or_else(|| format!("'{o}' is not an offset"))?;
        m.insert(p, o);
        if m.len() > max {
            return Err(format!("at most {max} partitions"));
        }
    }
    Ok(m)
}

/// Parses the `resume` client message:
/// `{"type":"resume","from":"cursor"|"earliest"|"latest","lastOffsets":{"0":12}}`.
fn parse_resume_message(v: &serde_json::Value, max: usize) -> Result<ResumeFrom, String> {
    match v.get("from").and_then(|f| f.as_str()).unwrap_or("cursor") {
        "earliest" => Ok(ResumeFrom::Earliest),
        "latest" => Ok(ResumeFrom::Latest),
        "cursor" => {
            let obj = v
                .get("lastOffsets")
                .and_then(|o| o.as_object())
                .ok_or("lastOffsets: expected an object of partition → offset")?;
            if obj.len() > max {
                return Err(format!("lastOffsets: at most {max} partitions"));
            }
            let mut m = HashMap::new();
            for (k, o) in obj {
                let p: i32 = k
                    .parse()
                    .ok()
                    .filter(|p| *p >= 0)
                    .ok_or_else(|| format!("lastOffsets: '{k}' is not a partition"))?;
                let o = o.as_i64().filter(|o| *o >= -1).ok_or_else(|| {
                    format!("lastOffsets: offset of partition {p} is not an integer ≥ -1")
                })?;
                m.insert(p, o);
            }
            Ok(ResumeFrom::Cursor(m))
        }
        other => Err(format!("from: '{other}' is not cursor, earliest or latest")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_inputs_are_validated() {
        assert_eq!(
            parse_offsets_param("0:12, 1:-1", 8),
            Ok([(0, 12), (1, -1)].into())
        );
        assert!(parse_offsets_param("0:x", 8).is_err());
        assert!(parse_offsets_param("-1:3", 8).is_err());
        assert!(parse_offsets_param("0:1,1:1,2:1", 2).is_err());
        let v = serde_json::json!({"type":"resume","from":"cursor","lastOffsets":{"0":5,"2":7}});
        assert_eq!(
            parse_resume_message(&v, 8),
            Ok(ResumeFrom::Cursor([(0, 5), (2, 7)].into()))
        );
        assert_eq!(
            parse_resume_message(&serde_json::json!({"from":"earliest"}), 8),
            Ok(ResumeFrom::Earliest)
        );
        assert!(parse_resume_message(&serde_json::json!({"from":"cursor"}), 8).is_err());
        assert!(parse_resume_message(
            &serde_json::json!({"from":"cursor","lastOffsets":{"a":1}}),
            8
        )
        .is_err());
        assert!(parse_resume_message(&serde_json::json!({"from":"sometime"}), 8).is_err());
    }

    #[test]
    fn query_parameters_map_to_a_resume_or_a_reason() {
        let q = |r, o| ResumeFrom::from_query(r, o, 8);
        assert_eq!(q(None, None), Ok(None));
        assert_eq!(q(Some("earliest"), None), Ok(Some(ResumeFrom::Earliest)));
        assert_eq!(q(Some("latest"), Some("0:1")), Ok(Some(ResumeFrom::Latest)));
        assert_eq!(
            q(None, Some("0:4")),
            Ok(Some(ResumeFrom::Cursor([(0, 4)].into())))
        );
        assert_eq!(
            q(Some("cursor"), None),
            Err("resume=cursor needs last_offsets=P:O,...".into())
        );
        assert!(q(Some("cursor"), Some("0:x"))
            .unwrap_err()
            .starts_with("last_offsets: "));
        assert_eq!(
            q(Some("soon"), None),
            Err("resume must be cursor, earliest or latest".into())
        );
    }
}
