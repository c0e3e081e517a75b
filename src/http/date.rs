//! The `Date` header (RFC 9110 §6.6.1): the IMF-fixdate of the current second, formatted at most
//! once a second and shared by every response written in that second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};

/// The formatted date and the second it is for.
struct Cached {
    second: AtomicU64,
    text: ArcSwap<String>,
}

static CACHE: LazyLock<Cached> = LazyLock::new(|| Cached {
    second: AtomicU64::new(u64::MAX),
    text: ArcSwap::from_pointee(String::new()),
});

/// The `Date` value for now. The first caller in a new second formats it; everyone else reads the
/// shared text: no lock, no allocation, and no reference count written by every response (the
/// guard borrows a slot of the current thread; use it at once, never across a park).
pub fn now() -> Guard<Arc<String>> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let cache = &*CACHE;
    let seen = cache.second.load(Ordering::Acquire);
    if seen != secs
        && cache
            .second
            .compare_exchange(seen, secs, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        cache.text.store(Arc::new(imf_fixdate(secs)));
    }
    cache.text.load()
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` for seconds since the Unix epoch.
pub fn imf_fixdate(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01, in the proleptic Gregorian
/// calendar (Howard Hinnant's days-to-civil algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_format_as_imf_fixdate() {
        assert_eq!(imf_fixdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(imf_fixdate(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(imf_fixdate(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(imf_fixdate(1_798_761_599), "Thu, 31 Dec 2026 23:59:59 GMT");
    }

    #[test]
    fn now_is_one_shared_text_per_second() {
        let a = now();
        let b = now();
        assert!(a.ends_with(" GMT") && a.len() == 29, "{a}");
        // Same second almost always; if the second turned, the texts differ by it.
        assert!(Arc::ptr_eq(&a, &b) || **a != **b);
    }
}
