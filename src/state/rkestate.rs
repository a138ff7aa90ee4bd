//! RKE's `cluster.rkestate`, kept as a JSON tree so every key atrest does not know survives untouched and in
//! order. atrest writes only what RKE itself keeps about encryption (`{desired,current}State.encryptionConfig`
//! and `rkeConfig.services.kubeApi.secretsEncryptionConfig`) and reads certificates. Its own bookkeeping is in a
//! file of its own, because RKE rewrites this one whole and drops keys it does not know; an `atrest` key left by
//! an older atrest is read once and removed.

use crate::config::error::redact_decode_message;
use crate::gojson;
use crate::secret::SecretString;
use crate::state::atrest::{AtrestState, LEGACY_STATE_KEY};
use crate::state::error::StateError;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

const DESIRED_STATE: &str = "desiredState";
const CURRENT_STATE: &str = "currentState";
const ENCRYPTION_CONFIG: &str = "encryptionConfig";
const CERTIFICATES_BUNDLE: &str = "certificatesBundle";
const RKE_CONFIG: &str = "rkeConfig";
const SECRETS_ENCRYPTION_CONFIG: &str = "secretsEncryptionConfig";
/// The two states of cluster.rkestate, for [`RkeState::rke_secrets_encryption`].
pub const DESIRED: &str = DESIRED_STATE;
pub const CURRENT: &str = CURRENT_STATE;

/// The name RKE gives the etcd server certificate of the node with this (internal) address
/// (`pki.GetEtcdCrtName`: `kube-etcd-` + the address with dots replaced by dashes).
pub fn etcd_certificate_name(address: &str) -> String {
    format!("kube-etcd-{}", address.replace('.', "-"))
}

/// A certificate and its private key from the state, as PEM text. The key is zeroed on drop and never printed.
#[derive(Clone, Debug)]
pub struct CertificatePem {
    pub cert_pem: String,
    pub key_pem: SecretString,
}

/// The whole cluster.rkestate document.
#[derive(Clone)]
pub struct RkeState {
    /// Always a JSON object.
    value: Value,
    /// The bytes this state was parsed from; written back verbatim while nothing changed.
    original: Option<Zeroizing<Vec<u8>>>,
    changed: bool,
}

impl fmt::Debug for RkeState {
    // The tree holds private keys and encryption keys: show only its shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.root().keys().map(String::as_str).collect();
        f.debug_struct("RkeState")
            .field("keys", &keys)
            .field("changed", &self.changed)
            .finish_non_exhaustive()
    }
}

impl Default for RkeState {
    fn default() -> Self {
        Self::empty()
    }
}

impl Drop for RkeState {
    fn drop(&mut self) {
        zeroize_strings(&mut self.value);
    }
}

impl RkeState {
    /// The state of a cluster RKE has not set up yet (no state file).
    pub fn empty() -> Self {
        Self {
            value: Value::Object(Map::new()),
            original: None,
            changed: false,
        }
    }

    /// Parses the text of a state file. `path` names the file in errors, which carry line and column.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self, StateError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(StateError::Empty {
                path: path.to_path_buf(),
            });
        }
        if bytes.starts_with(b"\xEF\xBB\xBF") {
            return Err(StateError::Malformed {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                at: None,
                message: "the file starts with a UTF-8 byte order mark, which JSON (and RKE's reader) do not allow"
                    .to_string(),
            });
        }
        // First a typed pass over the text: it reports wrong types with their position and key path.
        check_shape(bytes, path)?;
        let value: Value = serde_json::from_slice(bytes).map_err(|e| malformed(path, None, &e))?;
        Ok(Self {
            value,
            original: Some(Zeroizing::new(bytes.to_vec())),
            changed: false,
        })
    }

    /// The file content to write: the original bytes if nothing changed, otherwise the tree formatted as RKE
    /// (Go's `json.MarshalIndent` with two spaces) would write it.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, StateError> {
        if let (false, Some(original)) = (self.changed, &self.original) {
            return Ok(original.clone());
        }
        let mut out =
            Zeroizing::new(gojson::to_vec_go_indent(&self.value).map_err(StateError::Serialize)?);
        // RKE writes no trailing newline; keep one if the file had it (e.g. after `jq . > cluster.rkestate`).
        if self.original.as_ref().is_some_and(|o| o.ends_with(b"\n")) {
            out.push(b'\n');
        }
        Ok(out)
    }

    /// Whether a setter changed anything since the state was parsed or created.
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// True for the state of a cluster RKE never set up (no file, or a file without either state).
    pub fn is_empty(&self) -> bool {
        [DESIRED_STATE, CURRENT_STATE].iter().all(|k| {
            self.root()
                .get(*k)
                .is_none_or(|v| v.is_null() || v.as_object().is_some_and(Map::is_empty))
        })
    }

    /// The whole document, read-only (for callers that need a field without an accessor yet).
    pub fn as_value(&self) -> &Value {
        &self.value
    }

    /// `currentState.encryptionConfig`: the EncryptionConfiguration YAML deployed on the controlplanes.
    /// `None` when absent or empty (RKE omits the key when it is empty).
    pub fn current_encryption_config(&self) -> Option<&str> {
        self.encryption_config(CURRENT_STATE)
    }

    /// `desiredState.encryptionConfig`: the EncryptionConfiguration YAML RKE means to deploy next.
    pub fn desired_encryption_config(&self) -> Option<&str> {
        self.encryption_config(DESIRED_STATE)
    }

    /// Sets (or with `None`, removes) `currentState.encryptionConfig`.
    pub fn set_current_encryption_config(&mut self, yaml: Option<&str>) {
        self.set_encryption_config(CURRENT_STATE, yaml);
    }

    /// Sets (or with `None`, removes) `desiredState.encryptionConfig`.
    pub fn set_desired_encryption_config(&mut self, yaml: Option<&str>) {
        self.set_encryption_config(DESIRED_STATE, yaml);
    }

    /// `<section>.rkeConfig.services.kubeApi.secretsEncryptionConfig` as RKE decodes it: `(enabled, customConfig)`;
    /// `None` when the section has no rkeConfig. `section` is `desiredState` or `currentState`.
    pub fn rke_secrets_encryption(&self, section: &str) -> Option<(bool, Option<&Value>)> {
        let rke = self.section(section)?.get(RKE_CONFIG)?.as_object()?;
        let sec = rke
            .get("services")
            .and_then(|s| s.get("kubeApi"))
            .and_then(|k| k.get(SECRETS_ENCRYPTION_CONFIG))
            .and_then(Value::as_object);
        Some(match sec {
            None => (false, None),
            Some(sec) => (
                sec.get("enabled").and_then(Value::as_bool).unwrap_or(false),
                sec.get("customConfig").filter(|v| !v.is_null()),
            ),
        })
    }

    /// Makes `rkeConfig.services.kubeApi.secretsEncryptionConfig` of both states say what RKE itself would keep
    /// for the deployed config: `enabled`, and `customConfig` (its JSON form) or none. Only states that have an
    /// rkeConfig are touched (a state without one is a cluster RKE has not set up, which RKE tells by that).
    /// A state that already says the same is left as it is (no rewrite).
    pub fn set_rke_secrets_encryption(&mut self, enabled: bool, custom_config: Option<&Value>) {
        for section in [DESIRED_STATE, CURRENT_STATE] {
            if self.rke_secrets_encryption(section) == Some((enabled, custom_config)) {
                continue;
            }
            let Some(rke) = self
                .root_mut()
                .get_mut(section)
                .and_then(|s| s.get_mut(RKE_CONFIG))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let services = object_entry(rke, "services");
            let kube_api = object_entry(services, "kubeApi");
            let sec = object_entry(kube_api, SECRETS_ENCRYPTION_CONFIG);
            sec.insert("enabled".to_string(), Value::Bool(enabled));
            let old = match custom_config {
                Some(c) => sec.insert("customConfig".to_string(), c.clone()),
                None => sec.shift_remove("customConfig"),
            };
            if let Some(mut old) = old {
                zeroize_strings(&mut old);
            }
            self.changed = true;
        }
    }

    /// RKE's record of encryption in both states, to be put back verbatim by
    /// [`RkeState::restore_encryption_view`] (a re-rendering could differ in text from what RKE compares).
    pub fn encryption_view(&self) -> EncryptionView {
        let sections = [DESIRED_STATE, CURRENT_STATE].map(|section| {
            let map = self.section(section);
            let config = map.and_then(|m| m.get(ENCRYPTION_CONFIG)).cloned();
            let secrets = map
                .and_then(|m| m.get(RKE_CONFIG))
                .and_then(|r| r.get("services"))
                .and_then(|s| s.get("kubeApi"))
                .and_then(|k| k.get(SECRETS_ENCRYPTION_CONFIG))
                .cloned();
            (section, config, secrets)
        });
        EncryptionView(sections)
    }

    /// Puts back what [`RkeState::encryption_view`] took; a section without an rkeConfig keeps none.
    pub fn restore_encryption_view(&mut self, view: &EncryptionView) {
        for (section, config, secrets) in &view.0 {
            self.set_encryption_config(section, config.as_ref().and_then(Value::as_str));
            let Some(rke) = self
                .root_mut()
                .get_mut(*section)
                .and_then(|s| s.get_mut(RKE_CONFIG))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let kube_api = object_entry(object_entry(rke, "services"), "kubeApi");
            if kube_api.get(SECRETS_ENCRYPTION_CONFIG) == secrets.as_ref() {
                continue;
            }
            let old = match secrets {
                Some(v) => kube_api.insert(SECRETS_ENCRYPTION_CONFIG.to_string(), v.clone()),
                None => kube_api.shift_remove(SECRETS_ENCRYPTION_CONFIG),
            };
            if let Some(mut old) = old {
                zeroize_strings(&mut old);
            }
            self.changed = true;
        }
    }

    /// `currentState.rkeConfig`: the cluster config RKE last applied, in its camelCase JSON form.
    pub fn current_rke_config(&self) -> Option<&Value> {
        self.section(CURRENT_STATE)?
            .get(RKE_CONFIG)
            .filter(|v| !v.is_null())
    }

    /// Names of the certificates in `currentState.certificatesBundle` (e.g. `kube-ca`, `kube-node`,
    /// `kube-etcd-10-0-0-1`).
    pub fn certificate_names(&self) -> impl Iterator<Item = &str> {
        self.certificates_bundle()
            .into_iter()
            .flat_map(|b| b.keys().map(String::as_str))
    }

    /// The certificate `name` from `currentState.certificatesBundle`: `Ok(None)` if there is no such entry,
    /// an error if the entry lacks its certificate or key PEM.
    pub fn certificate(&self, name: &str) -> Result<Option<CertificatePem>, StateError> {
        let Some(entry) = self.certificates_bundle().and_then(|b| b.get(name)) else {
            return Ok(None);
        };
        let pem = |field: &'static str| {
            entry
                .get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| StateError::IncompleteCertificate {
                    name: name.to_string(),
                    field,
                })
        };
        Ok(Some(CertificatePem {
            cert_pem: pem("certificatePEM")?.to_string(),
            key_pem: SecretString::new(pem("keyPEM")?.to_string()),
        }))
    }

    /// atrest's bookkeeping as older atrest versions kept it under the top-level key `atrest` (`None`: no such
    /// key). Now it lives in atrest's own file; see [`crate::state::records`].
    pub fn legacy_atrest(&self) -> Result<Option<AtrestState>, StateError> {
        match self.root().get(LEGACY_STATE_KEY) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(AtrestState::default())),
            Some(v) => AtrestState::deserialize(v).map(Some).map_err(|e| {
                // serde quotes the offending value, which may be a key: keep the message without it.
                StateError::Atrest(de::Error::custom(redact_decode_message(&e.to_string())))
            }),
        }
    }

    /// Removes the legacy `atrest` key (after its content was saved elsewhere). True if there was one.
    pub fn remove_legacy_atrest(&mut self) -> bool {
        match self.root_mut().shift_remove(LEGACY_STATE_KEY) {
            Some(mut old) => {
                zeroize_strings(&mut old);
                self.changed = true;
                true
            }
            None => false,
        }
    }

    fn root(&self) -> &Map<String, Value> {
        self.value
            .as_object()
            .expect("RkeState always holds a JSON object")
    }

    fn root_mut(&mut self) -> &mut Map<String, Value> {
        self.value
            .as_object_mut()
            .expect("RkeState always holds a JSON object")
    }

    fn section(&self, name: &str) -> Option<&Map<String, Value>> {
        self.root().get(name)?.as_object()
    }

    fn certificates_bundle(&self) -> Option<&Map<String, Value>> {
        self.section(CURRENT_STATE)?
            .get(CERTIFICATES_BUNDLE)?
            .as_object()
    }

    fn encryption_config(&self, section: &str) -> Option<&str> {
        self.section(section)?
            .get(ENCRYPTION_CONFIG)?
            .as_str()
            .filter(|s| !s.is_empty())
    }

    fn set_encryption_config(&mut self, section: &str, yaml: Option<&str>) {
        let yaml = yaml.filter(|s| !s.is_empty());
        if self.encryption_config(section) == yaml {
            return;
        }
        let map = self.section_mut(section);
        let old = match yaml {
            Some(text) => map.insert(
                ENCRYPTION_CONFIG.to_string(),
                Value::String(text.to_string()),
            ),
            None => map.shift_remove(ENCRYPTION_CONFIG),
        };
        if let Some(mut old) = old {
            zeroize_strings(&mut old);
        }
        self.changed = true;
    }

    /// The `desiredState`/`currentState` object, created in RKE's order (desired before current) if missing.
    fn section_mut(&mut self, name: &str) -> &mut Map<String, Value> {
        let root = self.root_mut();
        if !root.get(name).is_some_and(Value::is_object) {
            let index = match name {
                DESIRED_STATE => 0,
                _ => root
                    .keys()
                    .position(|k| k == DESIRED_STATE)
                    .map_or(0, |i| i + 1),
            };
            root.shift_remove(name);
            root.shift_insert(index, name.to_string(), Value::Object(Map::new()));
        }
        match root.get_mut(name) {
            Some(Value::Object(map)) => map,
            _ => unreachable!("section {name} was just made an object"),
        }
    }
}

/// `map[key]` as an object, made one (replacing null or a wrong type) if it is not.
fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(m) => m,
        _ => unreachable!("{key} was just made an object"),
    }
}

/// Zeroes every string in a JSON tree: the state holds private keys and encryption keys.
/// Both states' `encryptionConfig` and `secretsEncryptionConfig` as they were (key material: zeroed on drop,
/// never printed).
pub struct EncryptionView([(&'static str, Option<Value>, Option<Value>); 2]);

impl Drop for EncryptionView {
    fn drop(&mut self) {
        for (_, config, secrets) in &mut self.0 {
            for value in [config, secrets].into_iter().flatten() {
                zeroize_strings(value);
            }
        }
    }
}

fn zeroize_strings(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(zeroize_strings),
        Value::Object(map) => map.values_mut().for_each(zeroize_strings),
        _ => {}
    }
}

fn malformed(path: &Path, at: Option<String>, e: &serde_json::Error) -> StateError {
    let text = e.to_string();
    // serde_json appends " at line L column C"; the error shows the position as file:line:column instead.
    // serde quotes the offending value, which may be a key or a private key: it never reaches the message.
    let mut message = redact_decode_message(match text.rfind(" at line ") {
        Some(i) if e.line() > 0 => &text[..i],
        _ => &text,
    });
    if message == "expected value" {
        message = "expected a JSON value here (is this file JSON at all?)".to_string();
    }
    StateError::Malformed {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        at,
        message,
    }
}

/// Checks the types of the keys RKE and atrest rely on, as Go's decoder would (null is accepted everywhere, as
/// Go leaves the zero value), without keeping any value.
fn check_shape(bytes: &[u8], path: &Path) -> Result<(), StateError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize::<_, Object<FullStateShape>>(&mut de).map_err(|e| {
        let at = e
            .path()
            .iter()
            .next()
            .is_some()
            .then(|| e.path().to_string());
        malformed(path, at, e.inner())
    })?;
    de.end().map_err(|e| malformed(path, None, &e))
}

#[derive(Deserialize)]
struct FullStateShape {
    #[serde(rename = "desiredState")]
    _desired: Option<Object<StateShape>>,
    #[serde(rename = "currentState")]
    _current: Option<Object<StateShape>>,
    #[serde(rename = "atrest")]
    _atrest: Option<Object<AtrestState>>,
}

#[derive(Deserialize)]
struct StateShape {
    #[serde(rename = "rkeConfig")]
    _rke_config: Option<Object<IgnoredAny>>,
    #[serde(rename = "certificatesBundle")]
    _certificates: Option<Object<Entries<Object<CertificateShape>>>>,
    #[serde(rename = "encryptionConfig")]
    _encryption_config: Option<JsonString>,
}

#[derive(Deserialize)]
struct CertificateShape {
    #[serde(rename = "certificatePEM")]
    _certificate_pem: Option<JsonString>,
    #[serde(rename = "keyPEM")]
    _key_pem: Option<JsonString>,
}

/// `T`, but only from a JSON object (serde's derived structs would also take an array).
struct Object<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Object(PhantomData))
            }
        }
        d.deserialize_map(ObjectVisitor(PhantomData))
    }
}

/// Every value of a map checked as `T` (keys are free-form names).
struct Entries<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for EntriesVisitor<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, T>()?.is_some() {}
                Ok(Entries(PhantomData))
            }
        }
        d.deserialize_map(EntriesVisitor(PhantomData))
    }
}

/// A JSON string, checked and dropped (it may be key material).
struct JsonString;

impl<'de> Deserialize<'de> for JsonString {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StringVisitor;
        impl Visitor<'_> for StringVisitor {
            type Value = JsonString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<JsonString, E> {
                Ok(JsonString)
            }
            fn visit_string<E: de::Error>(self, mut s: String) -> Result<JsonString, E> {
                s.zeroize();
                Ok(JsonString)
            }
        }
        d.deserialize_str(StringVisitor)
    }
}
