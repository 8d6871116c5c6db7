//! The tests' Kafka: the cluster `scripts/test.sh` starts, clusters of a test's own
//! ([`PrivateKafka`]), topic administration and reading topics back independently of
//! the code under test.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Offset, TopicPartitionList};

use super::{free_port, make_certificates, wait_until};

/// The broker the tests use: `IDEMPIPE_TEST_BROKERS` (scripts/test.sh starts one of the
/// tests' own on :9192), else the services' broker on :9092.
pub fn brokers() -> String {
    std::env::var("IDEMPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// An Apache Kafka cluster of the test's own (`scripts/kafka.sh` in `dir`, on free ports:
/// a KRaft controller and two brokers, topics with 2 replicas): plain
/// ([`PrivateKafka::plain`]), or reached over TLS only, on the brokers' own TLS listeners
/// with a certificate from [`make_certificates`], and, with `scram`, SASL/SCRAM-SHA-512
/// authentication with that user and password.
pub struct PrivateKafka {
    dir: PathBuf,
    /// Broker 1's, the controller's and broker 2's plain ports.
    ports: [u16; 3],
    /// Broker 1's and broker 2's TLS ports; 0: no TLS listener.
    pub tls_ports: [u16; 2],
    /// The CA that signed the brokers' certificate.
    pub ca: PathBuf,
    /// The brokers' certificate and key, with TLS.
    tls: Option<(PathBuf, PathBuf)>,
    scram: Option<(String, String)>,
    /// Requests are authorized by ACLs (`KAFKA_ACL=1`).
    acls: bool,
    /// With SCRAM: the brokers' `connections.max.reauth.ms` (`KAFKA_REAUTH_MS`; 0: never).
    reauth_ms: u32,
}

impl PrivateKafka {
    /// A plain cluster (no TLS, no authentication): for tests that stop it.
    pub fn plain(dir: PathBuf) -> Self {
        let this = Self {
            dir,
            ports: [free_port(), free_port(), free_port()],
            tls_ports: [0, 0],
            ca: PathBuf::new(),
            tls: None,
            scram: None,
            acls: false,
            reauth_ms: 0,
        };
        this.script(&["fresh"]);
        this
    }

    pub fn start(dir: PathBuf, scram: Option<(&str, &str)>) -> Self {
        Self::start_with(dir, scram, false, 0)
    }

    /// Over TLS with SCRAM, the brokers asking every connection to authenticate again
    /// within `reauth_ms` (`connections.max.reauth.ms`, KIP-368).
    pub fn reauthenticating(dir: PathBuf, user: &str, password: &str, reauth_ms: u32) -> Self {
        Self::start_with(dir, Some((user, password)), false, reauth_ms)
    }

    /// Over TLS with SCRAM, every request authorized by ACLs: the user may do what
    /// [`PrivateKafka::acl`] allows it and nothing else.
    pub fn with_acls(dir: PathBuf, user: &str, password: &str) -> Self {
        Self::start_with(dir, Some((user, password)), true, 0)
    }

    fn start_with(dir: PathBuf, scram: Option<(&str, &str)>, acls: bool, reauth_ms: u32) -> Self {
        let (ca, cert, key) = make_certificates(&dir.join("tls"));
        let scram = scram.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let this = Self {
            dir,
            ports: [free_port(), free_port(), free_port()],
            tls_ports: [free_port(), free_port()],
            ca,
            tls: Some((cert, key)),
            scram,
            acls,
            reauth_ms,
        };
        this.script(&["fresh"]);
        this
    }

    /// Runs Kafka's ACL tool with `args` (`scripts/kafka.sh acl`).
    pub fn acl(&self, args: &[&str]) {
        let mut all = vec!["acl"];
        all.extend(args);
        self.script(&all);
    }

    /// Stops the cluster (its storage stays).
    pub fn stop(&self) {
        self.script(&["down"]);
    }

    /// Starts the stopped cluster again, on the same storage.
    pub fn start_again(&self) {
        self.script(&["up"]);
    }

    /// Kills broker `n` (1 or 2) by SIGKILL, as in a crash.
    pub fn kill_broker(&self, n: u8) {
        self.script_with(&["stop-broker", &n.to_string()], &[("KILL", "1")]);
    }

    /// Starts broker `n` again on its storage and waits until it answers.
    pub fn start_broker(&self, n: u8) {
        self.script(&["start-broker", &n.to_string()]);
    }

    /// Kills the KRaft controller by SIGKILL.
    pub fn kill_controller(&self) {
        self.script_with(&["stop-controller"], &[("KILL", "1")]);
    }

    /// Starts the controller again.
    pub fn start_controller(&self) {
        self.script(&["start-controller"]);
    }

    /// Changes the SCRAM user's password to `password` on the running cluster (the
    /// brokers take it at once; connections authenticated with the old one stay open
    /// until they authenticate again: [`PrivateKafka::reauthenticating`]).
    pub fn change_password(&mut self, password: &str) {
        let user = self.scram.as_ref().expect("a cluster with SCRAM").0.clone();
        self.scram = Some((user, password.to_owned()));
        self.script(&["up"]);
    }

    /// `host:port` of both brokers' TLS listeners, or of their plain ones without TLS (a
    /// client starting while one broker is down bootstraps from the other).
    pub fn brokers(&self) -> String {
        let [one, two] = if self.tls.is_none() { [self.ports[0], self.ports[2]] } else { self.tls_ports };
        format!("127.0.0.1:{one},127.0.0.1:{two}")
    }

    /// The librdkafka settings that reach it: TLS with the test's CA, and SCRAM if on.
    pub fn client_settings(&self) -> Vec<(String, String)> {
        let mut settings = vec![("ssl.ca.location".to_owned(), self.ca.display().to_string())];
        match &self.scram {
            None => settings.push(("security.protocol".into(), "SSL".into())),
            Some((user, password)) => settings.extend([
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("sasl.username".into(), user.clone()),
                ("sasl.password".into(), password.clone()),
            ]),
        }
        settings
    }

    /// A client configuration that reaches the cluster (its TLS and SCRAM settings).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.brokers());
        if self.tls.is_some() {
            for (k, v) in self.client_settings() {
                config.set(k, v);
            }
        }
        config
    }

    fn script(&self, args: &[&str]) {
        self.script_with(args, &[]);
    }

    fn script_with(&self, args: &[&str], env: &[(&str, &str)]) {
        let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"));
        let [port, controller, port2] = self.ports;
        command
            .args(args)
            .env("SERVICES_DIR", &self.dir)
            .env("KAFKA_PORT", port.to_string())
            .env("KAFKA_CONTROLLER_PORT", controller.to_string())
            .env("KAFKA_PORT2", port2.to_string())
            .envs(env.iter().copied());
        if let Some((cert, key)) = &self.tls {
            command
                .env("KAFKA_TLS_PORT", self.tls_ports[0].to_string())
                .env("KAFKA_TLS_PORT2", self.tls_ports[1].to_string())
                .env("KAFKA_TLS_CERT", cert)
                .env("KAFKA_TLS_KEY", key);
        }
        if let Some((user, password)) = &self.scram {
            command.env("KAFKA_SCRAM_USER", user).env("KAFKA_SCRAM_PASSWORD", password);
        }
        if self.acls {
            command.env("KAFKA_ACL", "1");
        }
        if self.reauth_ms > 0 {
            command.env("KAFKA_REAUTH_MS", self.reauth_ms.to_string());
        }
        let status = command.stdout(std::process::Stdio::null()).status().unwrap();
        assert!(status.success(), "scripts/kafka.sh {args:?} failed for the private cluster");
    }
}

/// Adds partitions to `topic` on the cluster at `brokers` until it has `partitions`, with
/// the admin API (`CreatePartitions`), and waits until its metadata lists them.
pub fn add_partitions(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    futures::executor::block_on(async {
        let grow = NewPartitions::new(topic, partitions as usize);
        for result in admin.create_partitions(&[grow], &options).await.unwrap() {
            result.unwrap_or_else(|(t, e)| panic!("adding partitions to {t}: {e}"));
        }
    });
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    wait_until(Duration::from_secs(30), "the broker reporting the new partitions", || {
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .is_ok_and(|m| m.topics().iter().any(|t| t.name() == topic && t.partitions().len() == partitions as usize))
    });
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        self.script(&["down"]);
    }
}

/// Deletes `topic` on the cluster at `brokers` and creates it again with `partitions`
/// partitions and 2 replicas, as an operator would with the admin API: its offsets start
/// over at 0. (A creation that races the deletion's completion is refused with
/// `TopicAlreadyExists`: it is tried again.)
pub fn recreate_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    futures::executor::block_on(async {
        for result in admin.delete_topics(&[topic], &options).await.unwrap() {
            result.unwrap_or_else(|(t, e)| panic!("deleting {t}: {e}"));
        }
    });
    wait_until(Duration::from_secs(60), "the topic created again", || {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(2));
        let results = futures::executor::block_on(admin.create_topics(&[new], &options)).unwrap();
        match &results[0] {
            Ok(_) => true,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => false,
            Err((t, e)) => panic!("creating {t} again: {e}"),
        }
    });
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    wait_until(Duration::from_secs(30), "the recreated topic's partitions", || {
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .is_ok_and(|m| m.topics().iter().any(|t| t.name() == topic && t.partitions().len() == partitions as usize))
    });
}

/// A record read back by [`read_all`].
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Reads a whole topic with a plain consumer, independently of the code under test:
/// from the beginning until every partition reports its end (EOF, from the high
/// watermark of fetch responses).
pub fn read_all(topic: &str) -> Vec<Record> {
    read_all_from(&brokers(), topic)
}

/// [`read_all`] on the broker at `brokers`.
pub fn read_all_from(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut open: HashSet<i32> = (0..partitions).collect();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !open.is_empty() {
        assert!(std::time::Instant::now() < deadline, "reading {topic} timed out");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}
