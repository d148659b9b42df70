//! chatd's settings. chatd reads each from a flag or its environment variable ([`var`]); the
//! operator's builders (as container environment) and the local runner (as a process's
//! environment) both produce them as [`Settings`], so each variable is spelled here only.

/// The environment variables chatd reads.
pub mod var {
    /// Services to run, comma-separated.
    pub const SERVICES: &str = "CHATD_SERVICES";
    /// gRPC address.
    pub const LISTEN: &str = "CHATD_LISTEN";
    /// Prometheus metrics address.
    pub const METRICS_LISTEN: &str = "CHATD_METRICS_LISTEN";
    /// Log as JSON lines.
    pub const LOG_JSON: &str = "CHATD_LOG_JSON";
    /// `host:port` of the database primary.
    pub const DB_PRIMARY: &str = "CHATD_DB_PRIMARY";
    /// File holding the primary's `host:port`, followed as it changes.
    pub const DB_PRIMARY_FILE: &str = "CHATD_DB_PRIMARY_FILE";
    /// `host:port` of the read replicas.
    pub const DB_REPLICAS: &str = "CHATD_DB_REPLICAS";
    /// Database schema.
    pub const DB_NAME: &str = "CHATD_DB_NAME";
    /// Database user.
    pub const DB_USER: &str = "CHATD_DB_USER";
    /// Database password.
    pub const DB_PASSWORD: &str = "CHATD_DB_PASSWORD";
    /// Connections per database pool.
    pub const DB_POOL: &str = "CHATD_DB_POOL";
    /// PEM public key verifying access tokens.
    pub const TOKEN_PUBLIC_KEY_FILE: &str = "CHATD_TOKEN_PUBLIC_KEY_FILE";
    /// PEM private key signing access tokens (auth only).
    pub const TOKEN_PRIVATE_KEY_FILE: &str = "CHATD_TOKEN_PRIVATE_KEY_FILE";
    /// `host:port` of the broker (NATS) the replicas exchange delivery hints through; with
    /// internal TLS, spoken over mutual TLS.
    pub const BROKER: &str = "CHATD_BROKER";
    /// Replica name.
    pub const POD_NAME: &str = "CHATD_POD_NAME";
    /// Writes per user per second.
    pub const RATE_PER_SECOND: &str = "CHATD_RATE_PER_SECOND";
    /// Writes per user at once.
    pub const RATE_BURST: &str = "CHATD_RATE_BURST";
    /// Login attempts one client address may make per minute (auth).
    pub const ADDRESS_LOGINS_PER_MINUTE: &str = "CHATD_ADDRESS_LOGINS_PER_MINUTE";
    /// Accounts one client address may register per hour (auth).
    pub const ADDRESS_REGISTRATIONS_PER_HOUR: &str = "CHATD_ADDRESS_REGISTRATIONS_PER_HOUR";
    /// Seconds of NOT_SERVING before stopping, on SIGTERM.
    pub const DRAIN_SECONDS: &str = "CHATD_DRAIN_SECONDS";
    /// Internal TLS: the directory of this replica's certificate and the cluster's CA.
    pub const TLS_DIR: &str = "CHATD_TLS_DIR";
}

/// Where a setting's value comes from: given, or (in Kubernetes) a key of a Secret or a field
/// of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// The value itself.
    Text(String),
    /// A Secret's key.
    Secret {
        /// The Secret.
        name: String,
        /// Its key.
        key: String,
    },
    /// A field of the pod (`metadata.name`, `status.podIP`).
    PodField(String),
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::Text(s.to_string())
    }
}

/// chatd's settings, as a cluster gives them; what is `None` (or empty) is left to chatd's
/// default.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Services to run.
    pub services: Vec<String>,
    /// gRPC address.
    pub listen: String,
    /// Prometheus metrics address.
    pub metrics_listen: Option<String>,
    /// `host:port` of the database primary.
    pub db_primary: String,
    /// File holding the primary's `host:port`, followed as it changes (local mode).
    pub db_primary_file: Option<String>,
    /// `host:port` of the read replicas.
    pub db_replicas: Option<String>,
    /// Database schema.
    pub db_name: String,
    /// Database user.
    pub db_user: Value,
    /// Database password.
    pub db_password: Value,
    /// Connections per database pool.
    pub db_pool: Option<u32>,
    /// PEM public key verifying access tokens.
    pub token_public_key_file: String,
    /// PEM private key signing access tokens (auth only).
    pub token_private_key_file: Option<String>,
    /// `host:port` of the broker; none: a single replica, hints stay in the process.
    pub broker: Option<String>,
    /// Replica name.
    pub pod_name: Value,
    /// Seconds of NOT_SERVING before stopping, on SIGTERM.
    pub drain_seconds: Option<f64>,
    /// Internal TLS: the certificate directory; none: plain text.
    pub tls_dir: Option<String>,
}

impl Settings {
    /// The environment variables, in a fixed order.
    pub fn env(&self) -> Vec<(&'static str, Value)> {
        let text = |s: &str| Value::Text(s.to_string());
        let mut out = vec![
            (var::SERVICES, Value::Text(self.services.join(","))),
            (var::LISTEN, text(&self.listen)),
        ];
        let mut some = |name: &'static str, v: Option<Value>| {
            if let Some(v) = v {
                out.push((name, v));
            }
        };
        some(
            var::METRICS_LISTEN,
            self.metrics_listen.as_deref().map(text),
        );
        some(var::DB_PRIMARY, Some(text(&self.db_primary)));
        some(
            var::DB_PRIMARY_FILE,
            self.db_primary_file.as_deref().map(text),
        );
        some(var::DB_REPLICAS, self.db_replicas.as_deref().map(text));
        some(var::DB_NAME, Some(text(&self.db_name)));
        some(var::DB_USER, Some(self.db_user.clone()));
        some(var::DB_PASSWORD, Some(self.db_password.clone()));
        some(
            var::DB_POOL,
            self.db_pool.map(|n| Value::Text(n.to_string())),
        );
        some(
            var::TOKEN_PUBLIC_KEY_FILE,
            Some(text(&self.token_public_key_file)),
        );
        some(
            var::TOKEN_PRIVATE_KEY_FILE,
            self.token_private_key_file.as_deref().map(text),
        );
        some(var::POD_NAME, Some(self.pod_name.clone()));
        some(var::BROKER, self.broker.as_deref().map(text));
        some(
            var::DRAIN_SECONDS,
            self.drain_seconds.map(|s| Value::Text(s.to_string())),
        );
        some(var::TLS_DIR, self.tls_dir.as_deref().map(text));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            services: vec!["groups".into(), "dms".into()],
            listen: "0.0.0.0:50051".into(),
            metrics_listen: None,
            db_primary: "db:3306".into(),
            db_primary_file: None,
            db_replicas: None,
            db_name: "chat".into(),
            db_user: "chat".into(),
            db_password: Value::Secret {
                name: "demo-db".into(),
                key: "app-password".into(),
            },
            db_pool: Some(16),
            token_public_key_file: "/keys/public.pem".into(),
            token_private_key_file: None,
            broker: None,
            pod_name: Value::PodField("metadata.name".into()),
            drain_seconds: None,
            tls_dir: Some("/etc/chatd/tls".into()),
        }
    }

    #[test]
    fn only_what_is_set_is_passed_and_lists_are_joined() {
        let env = settings().env();
        let names: Vec<&str> = env.iter().map(|(n, _)| *n).collect();
        assert!(!names.contains(&var::METRICS_LISTEN) && !names.contains(&var::BROKER));
        assert!(env.contains(&(var::SERVICES, "groups,dms".into())));
        assert!(env.contains(&(var::DB_POOL, "16".into())));
        assert!(env.contains(&(var::TLS_DIR, "/etc/chatd/tls".into())));
    }
}
