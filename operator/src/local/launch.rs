//! How each process of a [`Plan`] starts: the databases' configuration, initial users and
//! launch, chatd's settings and launch, and the static discovery file chat-xds reads. (The
//! plan itself — every process, port and file — is in [`super::plan`].)

use std::collections::BTreeMap;

use chatcluster_types::chatd;

use super::plan::{Binaries, DbProcess, Launch, Plan, ServicePlan, env};
use crate::{
    api::ServiceKind,
    build::{self, database, secrets},
};

impl Plan {
    /// How to start database server `db`.
    pub fn database_launch(&self, db: &DbProcess) -> Launch {
        Launch {
            name: db.name.clone(),
            program: self.binaries.mariadbd.clone(),
            args: vec![format!("--defaults-file={}", db.config_file().display())],
            env: env([("TMPDIR", db.tmp().display().to_string())]),
            port: db.port,
        }
    }

    /// The programs it runs.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// `my.cnf` of `db`: the operator's server configuration (the same replication settings as
    /// in Kubernetes) plus this server's identity, paths and port. `as_root`: the runner runs
    /// as root, which the server refuses unless told.
    pub fn database_config(&self, db: &DbProcess, as_root: bool) -> String {
        let mut spec = self.spec.database.clone();
        // Local mode runs the server this machine has: MariaDB.
        spec.engine = crate::api::DatabaseEngine::Mariadb;
        let mut out = build::database::server_config(&spec);
        for line in [
            format!("server_id={}", db.server_id),
            "bind_address=127.0.0.1".into(),
            format!("port={}", db.port),
            "report_host=127.0.0.1".into(),
            format!("datadir={}", db.data().display()),
            format!("tmpdir={}", db.tmp().display()),
            format!("socket={}", db.socket().display()),
            format!("pid_file={}", db.dir.join("mysqld.pid").display()),
            format!("log_error={}", db.error_log().display()),
            format!("init_file={}", db.init_file().display()),
            // A laptop, not a server: small buffers.
            "innodb_buffer_pool_size=64M".into(),
            "innodb_log_file_size=32M".into(),
            "max_connections=1000".into(),
        ]
        .into_iter()
        .chain(self.database_tls().iter().flat_map(|t| t.config_lines()))
        {
            out.push_str(&line);
            out.push('\n');
        }
        if as_root {
            out.push_str("user=root\n");
        }
        out
    }

    /// SQL every database server runs at start: the topology loop's and chatd's users and the
    /// schema, identical on every server and kept out of the binary log (so no server holds a
    /// transaction of its own, which would make it errant).
    pub fn database_init_sql(&self, credentials: &secrets::DbCredentials) -> String {
        let admin = database::ADMIN_USER;
        let repl = database::REPL_USER;
        let app = secrets::DB_APP_USER;
        let schema = build::DB_NAME;
        let privileges = crate::topology::dialect::MARIADB.admin_privileges;
        let (admin_pw, repl_pw, app_pw) = (
            credentials.admin(),
            credentials.replication(),
            credentials.app(),
        );
        format!(
            "SET SESSION sql_log_bin = 0;\n\
             CREATE USER IF NOT EXISTS '{admin}'@'%' IDENTIFIED BY '{admin_pw}';\n\
             GRANT {privileges} ON *.* TO '{admin}'@'%';\n\
             CREATE USER IF NOT EXISTS '{repl}'@'%' IDENTIFIED BY '{repl_pw}';\n\
             GRANT REPLICATION SLAVE ON *.* TO '{repl}'@'%';\n\
             CREATE DATABASE IF NOT EXISTS {schema};\n\
             CREATE USER IF NOT EXISTS '{app}'@'%' IDENTIFIED BY '{app_pw}';\n\
             GRANT ALL PRIVILEGES ON {schema}.* TO '{app}'@'%';\n"
        )
    }

    /// The broker's configuration: the same as in Kubernetes, on loopback, with the broker's
    /// certificate when internal TLS is on.
    pub fn broker_config(&self) -> String {
        let tls = (!self.certificates.is_empty()).then(|| {
            self.files
                .tls_dir(chatcluster_types::identity::component::BROKER)
                .display()
                .to_string()
        });
        build::broker::config(
            "127.0.0.1",
            i32::from(self.broker.port),
            None,
            tls.as_deref(),
        )
    }

    /// How to start replica `i` of `service`.
    pub fn chatd_launch(
        &self,
        service: &ServicePlan,
        i: usize,
        credentials: &secrets::DbCredentials,
    ) -> Launch {
        let port = service.port(i);
        let files = &self.files;
        let settings = chatd::Settings {
            services: vec![service.kind.to_string()],
            listen: format!("127.0.0.1:{port}"),
            metrics_listen: Some(format!("127.0.0.1:{}", port + 1)),
            db_primary: self.databases[0].address(),
            db_primary_file: Some(files.primary.display().to_string()),
            db_replicas: self.databases.get(1).map(|d| d.address()),
            db_name: build::DB_NAME.into(),
            db_user: secrets::DB_APP_USER.into(),
            db_password: credentials.app().into(),
            db_pool: Some(16),
            token_public_key_file: files.token_public.display().to_string(),
            token_private_key_file: (service.kind == ServiceKind::Auth)
                .then(|| files.token_private.display().to_string()),
            broker: Some(format!("127.0.0.1:{}", self.broker.port)),
            pod_name: service.replica_name(i).into(),
            drain_seconds: Some(2.0),
            tls_dir: (!self.certificates.is_empty())
                .then(|| files.tls_dir(service.kind.as_str()).display().to_string()),
        };
        // Everything here is a value: a process has no Secrets or pod fields to refer to.
        let env = settings
            .env()
            .into_iter()
            .filter_map(|(name, value)| match value {
                chatd::Value::Text(v) => Some((name.to_string(), v)),
                chatd::Value::Secret { .. } | chatd::Value::PodField(_) => None,
            })
            .collect();
        Launch {
            name: service.replica_name(i),
            program: self.binaries.chatd.clone(),
            args: Vec::new(),
            env,
            port,
        }
    }

    /// The static discovery file: `serving` replicas of each service, and the certificate.
    pub fn endpoints_file(&self, serving: &BTreeMap<ServiceKind, Vec<usize>>) -> serde_json::Value {
        let services: serde_json::Map<String, serde_json::Value> = self
            .services
            .iter()
            .map(|s| {
                let list: Vec<_> = serving
                    .get(&s.kind)
                    .into_iter()
                    .flatten()
                    .map(|&i| serde_json::json!({ "address": "127.0.0.1", "port": s.port(i) }))
                    .collect();
                (s.kind.to_string(), serde_json::Value::Array(list))
            })
            .collect();
        serde_json::json!({
            "services": services,
            "certificate": {
                "certFile": self.files.tls_cert,
                "keyFile": self.files.tls_key,
            }
        })
    }
}
