//! Symbol names: the shape a well-formed one has, and its normal (upper-case) form.

use crate::error::ApiError;

/// Upper-case a symbol and check its shape: 1-12 of `A-Z 0-9 . -`.
pub fn normalize_symbol(raw: &str) -> Result<String, ApiError> {
    let s = raw.trim().to_ascii_uppercase();
    let ok = (1..=12).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if ok {
        Ok(s)
    } else {
        Err(ApiError::BadSymbol(raw.chars().take(40).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_uppercased_and_checked() {
        assert_eq!(normalize_symbol(" brk.b ").unwrap(), "BRK.B");
        assert_eq!(normalize_symbol("rds-a").unwrap(), "RDS-A");
        for bad in ["", "TOOLONGSYMBOLX", "A B", "<x>", "É"] {
            assert!(normalize_symbol(bad).is_err(), "{bad:?}");
        }
    }
}
