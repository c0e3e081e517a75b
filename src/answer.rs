//! An answer to a snapshot, a poll or a stream event: `{"cursor":N,"quotes":[...]}`, built once
//! from the quotes' pre-serialized bytes.

use std::io::Write as _;

use crate::metrics::Reason;

/// An answer to a snapshot or a poll (a stream event carries the same JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub cursor: u64,
    /// How many quotes `json` carries.
    pub quotes: usize,
    pub json: Vec<u8>,
    pub reason: Reason,
}

impl Answer {
    /// `{"cursor":N,"quotes":[...]}` from pre-serialized quotes.
    pub fn build<B: AsRef<[u8]>>(
        cursor: u64,
        reason: Reason,
        quotes: impl Iterator<Item = B>,
    ) -> Answer {
        // Room for a few quotes of ~110 bytes; one allocation for the usual answer.
        let mut json = Vec::with_capacity(256);
        // Writing into a Vec cannot fail; no temporary String for the number.
        let _ = write!(json, "{{\"cursor\":{cursor},\"quotes\":[");
        let mut n = 0;
        for q in quotes {
            if n > 0 {
                json.push(b',');
            }
            json.extend_from_slice(q.as_ref());
            n += 1;
        }
        json.extend_from_slice(b"]}");
        Answer {
            cursor,
            quotes: n,
            json,
            reason,
        }
    }

    /// No quotes: a timeout or shutdown answer, which hands the same cursor back.
    pub fn empty(cursor: u64, reason: Reason) -> Answer {
        Answer::build(cursor, reason, std::iter::empty::<&[u8]>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_json_joins_preserialized_quotes() {
        let a = Answer::build(
            7,
            Reason::Change,
            [&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]].into_iter(),
        );
        assert_eq!(a.json, b"{\"cursor\":7,\"quotes\":[{\"a\":1},{\"b\":2}]}");
        assert_eq!(a.quotes, 2);
        assert_eq!(
            Answer::empty(9, Reason::Timeout).json,
            b"{\"cursor\":9,\"quotes\":[]}"
        );
    }
}
