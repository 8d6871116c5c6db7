//! Messages in the Confluent wire format, their schemas in a schema registry that speaks
//! Confluent's API (Confluent's own, Apicurio's `/apis/ccompat/v7`, Redpanda's, Karapace):
//! a magic byte 0, the schema id (4 bytes, big-endian), then the body, Avro, Protobuf
//! (after its message indexes) or JSON (checked by a JSON Schema).
//!
//! Consuming ([`Registry::decode`]): the schema of each id is fetched once and kept (an
//! id's schema never changes: a new schema gets a new id, fetched when it first appears),
//! and each body is turned into the JSON object the event contract reads, so identities,
//! typed columns and dead letters work as for JSON. A registry that does not answer is
//! waited for, the batch held (nothing is committed meanwhile; `/readyz` names it after
//! 20 s); an id the registry does not know, a body its schema does not decode, or bytes
//! without the wire format are dead letters.
//!
//! Producing ([`encode::Encoder`]): `produce --format` registers a schema under the
//! subject its naming strategy gives and writes each line in the wire format.

pub mod decode;
pub mod encode;
pub mod wire;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;

use crate::event::{RejectClass, Rejection};
use crate::retry::Backoff;
use crate::shutdown::Shutdown;

pub use decode::Decoder;

/// Where the schema registry is and how to reach it. Its `Debug` redacts the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// The base of Confluent's API (`http://host:8081`, Apicurio's
    /// `http://host:8080/apis/ccompat/v7`); `None`: no registry configured.
    pub url: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// PEM CA certificates trusted besides the system's roots, for an `https://` URL.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| crate::config::options::REDACTED))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// A failed request to the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {url}: no answer to {what}: {reason}")]
    Unavailable { url: String, what: String, reason: String },
    #[error("schema registry {url} has no {what}")]
    NotFound { url: String, what: String },
    #[error("schema registry {url} refused {what}: {reason}")]
    Refused { url: String, what: String, reason: String },
    #[error("schema registry {url}: {what}")]
    Unexpected { url: String, what: String },
    #[error("schema registry: `schema_registry_url` is not set")]
    NotConfigured,
}

/// The kind of a registered schema (`schemaType`; absent means Avro).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKind {
    Avro,
    Protobuf,
    Json,
}

impl SchemaKind {
    /// Confluent's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avro => "AVRO",
            Self::Protobuf => "PROTOBUF",
            Self::Json => "JSON",
        }
    }

    fn parse(text: Option<&str>) -> Option<Self> {
        match text.unwrap_or("AVRO") {
            "AVRO" => Some(Self::Avro),
            "PROTOBUF" => Some(Self::Protobuf),
            "JSON" => Some(Self::Json),
            _ => None,
        }
    }
}

/// A schema the registry returned, and the schemas it references (by name).
#[derive(Debug, Clone)]
pub struct Fetched {
    pub kind: SchemaKind,
    pub text: String,
    /// The referenced schemas, each under the name the schema imports it by, the
    /// references of references included.
    pub references: Vec<(String, String)>,
}

/// A reference of a registered schema.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Reference {
    pub name: String,
    pub subject: String,
    pub version: i64,
}

#[derive(serde::Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

/// The registry's HTTP API.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    url: String,
    user: Option<String>,
    password: Option<String>,
}

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl RegistryClient {
    /// A client of the configured registry (no request is made).
    pub fn new(settings: &RegistrySettings) -> Result<Self, RegistryError> {
        let url = settings.url.clone().ok_or(RegistryError::NotConfigured)?;
        let unexpected = |what: String| RegistryError::Unexpected { url: url.clone(), what };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            .use_rustls_tls();
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| unexpected(format!("cannot read `schema_registry_ca_file` {}: {e}", path.display())))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                unexpected(format!("`schema_registry_ca_file` {} holds no PEM certificate: {e}", path.display()))
            })?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().map_err(|e| unexpected(format!("cannot make an HTTP client: {e}")))?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            user: settings.user.clone(),
            password: settings.password.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn request(&self, what: &str, request: reqwest::RequestBuilder) -> Result<serde_json::Value, RegistryError> {
        let request = match &self.user {
            Some(user) => request.basic_auth(user, self.password.as_ref()),
            None => request,
        };
        let unavailable =
            |reason: String| RegistryError::Unavailable { url: self.url.clone(), what: what.to_owned(), reason };
        let response = request.send().await.map_err(|e| unavailable(error_chain(&e)))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| unavailable(error_chain(&e)))?;
        let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        if status.is_success() {
            return json.ok_or_else(|| RegistryError::Unexpected {
                url: self.url.clone(),
                what: format!("{what}: the answer is not JSON: {}", cut(&body)),
            });
        }
        // Confluent's error codes: 40401 subject, 40402 version, 40403 schema not found.
        let code = json.as_ref().and_then(|j| j.get("error_code")).and_then(serde_json::Value::as_i64);
        if status == reqwest::StatusCode::NOT_FOUND || code.is_some_and(|c| (40400..40500).contains(&c)) {
            return Err(RegistryError::NotFound { url: self.url.clone(), what: what.to_owned() });
        }
        let reason = format!("HTTP {status}: {}", cut(&body));
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(unavailable(reason));
        }
        Err(RegistryError::Refused { url: self.url.clone(), what: what.to_owned(), reason })
    }

    /// The schema registered under `id`, with its references.
    pub async fn schema(&self, id: u32) -> Result<Fetched, RegistryError> {
        let what = format!("schema id {id}");
        let answer = self.request(&what, self.http.get(format!("{}/schemas/ids/{id}", self.url))).await?;
        self.fetched(&what, answer).await
    }

    /// Version `version` of `subject`'s schema.
    async fn subject_version(&self, subject: &str, version: i64) -> Result<Fetched, RegistryError> {
        let what = format!("subject {subject:?} version {version}");
        let url = format!("{}/subjects/{}/versions/{version}", self.url, encode_path(subject));
        let answer = self.request(&what, self.http.get(url)).await?;
        self.fetched(&what, answer).await
    }

    async fn fetched(&self, what: &str, answer: serde_json::Value) -> Result<Fetched, RegistryError> {
        let unexpected = |detail: String| RegistryError::Unexpected { url: self.url.clone(), what: detail };
        let answer: SchemaAnswer =
            serde_json::from_value(answer).map_err(|e| unexpected(format!("{what}: an unexpected answer: {e}")))?;
        let kind = SchemaKind::parse(answer.schema_type.as_deref())
            .ok_or_else(|| unexpected(format!("{what}: unknown schemaType {:?}", answer.schema_type)))?;
        let mut references = Vec::new();
        for reference in &answer.references {
            let referenced = Box::pin(self.subject_version(&reference.subject, reference.version)).await?;
            references.extend(referenced.references);
            references.push((reference.name.clone(), referenced.text));
        }
        Ok(Fetched { kind, text: answer.schema, references })
    }

    /// Registers `schema` under `subject` (or finds it registered) and returns its id.
    pub async fn register(&self, subject: &str, kind: SchemaKind, schema: &str) -> Result<u32, RegistryError> {
        let what = format!("registering a schema under subject {subject:?}");
        let url = format!("{}/subjects/{}/versions", self.url, encode_path(subject));
        let body = serde_json::json!({ "schema": schema, "schemaType": kind.as_str() });
        let answer = self.request(&what, self.http.post(url).json(&body)).await?;
        answer.get("id").and_then(serde_json::Value::as_u64).and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
            RegistryError::Unexpected { url: self.url.clone(), what: format!("{what}: no id in the answer {answer}") }
        })
    }
}

/// A subject's name in a URL path.
fn encode_path(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>().replace('+', "%20")
}

/// `text`, cut to 300 characters.
fn cut(text: &str) -> String {
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// An error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Why a message could not be decoded now.
#[derive(Debug)]
pub enum Undecoded {
    /// The message is refused: a dead letter.
    Rejected(Rejection),
    /// Shutdown came while the registry did not answer: the message is not handled (its
    /// batch is not committed, and it is read again at the next start).
    Abandoned(String),
}

/// The wait between two requests to a registry that does not answer: 250 ms doubling to
/// 10 s.
const BACKOFF: Backoff = Backoff { base: Duration::from_millis(250), cap: Duration::from_secs(10) };

/// The decoders of the schema ids seen so far, and the registry they come from.
pub struct Registry {
    client: RegistryClient,
    runtime: Handle,
    shutdown: Shutdown,
    decoders: Mutex<HashMap<u32, Arc<Decoder>>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("url", &self.client.url).finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry client whose waits end at `shutdown`; blocking calls go through
    /// `runtime` (the caller must not be one of its workers).
    pub fn new(settings: &RegistrySettings, runtime: Handle, shutdown: Shutdown) -> Result<Self, RegistryError> {
        Ok(Self { client: RegistryClient::new(settings)?, runtime, shutdown, decoders: Mutex::default() })
    }

    /// The event (as JSON text) that `message` holds: read by the wire format, decoded by
    /// the schema of its id (fetched the first time, waiting while the registry does not
    /// answer).
    pub fn decode(&self, message: &[u8]) -> Result<String, Undecoded> {
        let framed = wire::Framed::parse(message).map_err(Undecoded::Rejected)?;
        let decoder = self.decoder(framed.id)?;
        decoder.decode(framed.body).map_err(Undecoded::Rejected)
    }

    /// The decoder of schema `id`: kept, or fetched.
    fn decoder(&self, id: u32) -> Result<Arc<Decoder>, Undecoded> {
        if let Some(known) = self.decoders.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(known.clone());
        }
        let mut attempt = 0;
        let fetched = loop {
            attempt += 1;
            match self.runtime.block_on(self.client.schema(id)) {
                Ok(fetched) => {
                    crate::metrics::service_recovered("schema_registry");
                    break fetched;
                }
                Err(RegistryError::NotFound { .. }) => {
                    crate::metrics::service_recovered("schema_registry");
                    return Err(Undecoded::Rejected(Rejection::new(
                        RejectClass::UnknownSchema,
                        format!("schema id {id} is not in the schema registry"),
                    )));
                }
                Err(e) => {
                    // No answer, a server error or refused credentials: the message waits
                    // for the registry (nothing is committed meanwhile).
                    crate::metrics::service_error("schema_registry", &e.to_string());
                    let wait = BACKOFF.delay(attempt);
                    tracing::warn!(attempt, error = %e, ?wait, "cannot fetch a schema; the batch waits for the registry");
                    if !self.shutdown.sleep(wait) {
                        return Err(Undecoded::Abandoned(e.to_string()));
                    }
                }
            }
        };
        let decoder = match Decoder::new(&fetched) {
            Ok(decoder) => Arc::new(decoder),
            Err(why) => {
                // Kept, so that each message of this id is refused at once.
                tracing::warn!(id, error = %why, "schema id {id} cannot be read: its messages are dead letters");
                Arc::new(Decoder::Unusable(format!("schema id {id} cannot be used: {why}")))
            }
        };
        self.decoders.lock().unwrap_or_else(|p| p.into_inner()).insert(id, decoder.clone());
        tracing::info!(id, kind = fetched.kind.as_str(), "schema fetched from the registry");
        Ok(decoder)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// One HTTP exchange on a loopback listener: the request it got, and `status` with
    /// `body` as the answer.
    fn answer_once(status: &str, body: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let status = status.to_owned();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0_u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, server)
    }

    fn client(url: String, user: Option<&str>) -> RegistryClient {
        let settings = RegistrySettings {
            url: Some(url),
            user: user.map(str::to_owned),
            password: user.map(|_| "s3cret".to_owned()),
            ca_file: None,
        };
        RegistryClient::new(&settings).unwrap()
    }

    #[test]
    fn schemas_are_asked_for_by_id_with_the_credentials() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (url, server) = answer_once("200 OK", r#"{"schema":"{\"type\":\"object\"}","schemaType":"JSON"}"#);
        let fetched = runtime.block_on(client(url, Some("reader")).schema(42)).unwrap();
        assert_eq!((fetched.kind, fetched.text.as_str()), (SchemaKind::Json, r#"{"type":"object"}"#));
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /schemas/ids/42 "), "{request}");
        // base64("reader:s3cret")
        assert!(request.to_ascii_lowercase().contains("authorization: basic cmvhzgvyonmzy3jlda=="), "{request}");
    }

    #[test]
    fn answers_are_told_apart_unknown_ids_from_an_unavailable_registry() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (url, server) = answer_once("404 Not Found", r#"{"error_code":40403,"message":"Schema 7 not found"}"#);
        let err = runtime.block_on(client(url, None).schema(7)).unwrap_err();
        assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
        assert!(!server.join().unwrap().to_ascii_lowercase().contains("authorization"), "no credentials configured");
        let (url, server) = answer_once("503 Service Unavailable", r#"{"message":"starting"}"#);
        let err = runtime.block_on(client(url, None).schema(7)).unwrap_err();
        assert!(matches!(err, RegistryError::Unavailable { .. }), "{err}");
        server.join().unwrap();
        let (url, server) = answer_once("401 Unauthorized", r#"{"message":"who are you"}"#);
        let err = runtime.block_on(client(url, None).schema(7)).unwrap_err();
        assert!(matches!(err, RegistryError::Refused { .. }), "{err}");
        server.join().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = runtime.block_on(client(format!("http://{closed}"), None).schema(7)).unwrap_err();
        assert!(matches!(err, RegistryError::Unavailable { .. }), "{err}");
    }
}
