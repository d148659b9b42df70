//! The database servers' certificates: which servers still serve one other than the one the
//! driver issued last. A server reads its certificate only at start and when told to
//! ([`super::dialect::Dialect::reload_tls`]), so after a renewal the loop tells it. The file
//! may reach the server later than the renewal (Kubernetes updates Secret volumes within a
//! minute or so): until it does, the reload is simply due again on the next tick.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The servers' TLS, when the cluster has an internal CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The CA's path on every server: replication verifies its source with it.
    pub ca_path: String,
    /// When the certificate the driver issued last expires: the one every server should
    /// serve.
    pub not_after: SystemTime,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The time in a server's `Ssl_server_not_after` status (OpenSSL's notation,
/// `Dec  1 23:18:44 2036 GMT`); `None` for an empty value (no TLS on the connection) or
/// anything else.
pub fn parse_not_after(text: &str) -> Option<SystemTime> {
    let mut parts = text.split_whitespace();
    let name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == name)?;
    let day: u8 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(|p| p.parse::<u8>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    let year: i32 = parts.next()?.parse().ok()?;
    if parts.next() != Some("GMT") || parts.next().is_some() {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(month + 1).ok()?).ok()?;
    let at = time::Date::from_calendar_date(year, month, day)
        .ok()?
        .with_hms(hour, minute, second)
        .ok()?
        .assume_utc();
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// How long after telling a server to reload the loop tells it again, while it still serves
/// the old certificate (the new file has not reached it yet).
pub const RELOAD_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// Whether a server reporting `served` (its `Ssl_server_not_after`) must reload to serve the
/// certificate expiring at `expected`. Certificates are compared at the second, which is
/// all the notation keeps. Nothing served (a connection without TLS) tells nothing: no
/// reload.
pub fn reload_due(expected: SystemTime, served: &str) -> bool {
    let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).ok();
    !served.is_empty() && parse_not_after(served).and_then(seconds) != seconds(expected)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn openssl_times_parse_to_the_second() {
        let t = parse_not_after("Dec  1 23:18:44 2036 GMT").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            2_111_786_324
        );
        assert_eq!(
            parse_not_after("Feb 29 00:00:00 2028 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_835_395_200))
        );
        for bad in [
            "",
            "Dec 1 23:18:44 2036",
            "Dez  1 23:18:44 2036 GMT",
            "Feb 30 00:00:00 2028 GMT",
            "Dec  1 24:00:00 2036 GMT",
            "Dec  1 23:18:44 2036 GMT extra",
        ] {
            assert_eq!(parse_not_after(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_reload_is_due_until_the_server_serves_the_issued_certificate() {
        let issued = parse_not_after("Dec  1 23:18:44 2036 GMT").unwrap();
        assert!(!reload_due(issued, "Dec  1 23:18:44 2036 GMT"));
        // Sub-second parts of the issued time are not in the notation.
        assert!(!reload_due(
            issued + Duration::from_millis(400),
            "Dec  1 23:18:44 2036 GMT"
        ));
        assert!(reload_due(issued, "Nov  1 23:18:44 2036 GMT"));
        assert!(reload_due(issued, "garbage"));
        assert!(!reload_due(issued, ""));
    }
}
