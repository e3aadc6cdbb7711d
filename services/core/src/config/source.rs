//! Where settings come from: built-in defaults, an optional TOML file,
//! then `TRIGGERS_<SECTION>__<FIELD>` environment variables, merged by
//! figment before each section is typed.

use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CommonConfig, ConfigError, ENV_PREFIX, Validate};

/// The merged configuration layers, before typing.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    figment: Figment,
}

impl ConfigSource {
    /// Defaults, then the file (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_parts(file, std::env::vars())
    }

    /// Defaults, then the file (if any), then the given variables (those that
    /// start with [`ENV_PREFIX`] and hold a `__`). Tests use this instead of
    /// touching the process environment.
    pub fn from_parts(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::from_layers(None, file, env)
    }

    /// Defaults, then `base` (TOML defaults of a deployment, such as the
    /// local runner's), then the file, then the variables.
    pub fn from_layers(
        base: Option<&str>,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(CommonConfig::default()));
        if let Some(base) = base {
            figment = figment.merge(Toml::string(base));
        }
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile {
                    path: path.display().to_string(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(EnvVars::new(env));
        Ok(Self { figment })
    }

    /// Adds a TOML snippet on top of every layer (used by the local runner and
    /// tests to point services at their stack).
    pub fn with_toml(self, toml: &str) -> Self {
        Self {
            figment: self.figment.merge(Toml::string(toml)),
        }
    }

    /// Sets one value on top of every layer.
    pub fn with_value(self, setting: &str, value: impl Serialize) -> Self {
        Self {
            figment: self.figment.merge(Serialized::default(setting, value)),
        }
    }

    /// The shared sections, checked.
    pub fn common(&self) -> Result<CommonConfig, ConfigError> {
        let config: CommonConfig = self.figment.extract().map_err(|e| ConfigError::from_figment(e, None))?;
        let mut issues = Vec::new();
        config.validate("", &mut issues);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { issues })
        }
    }

    /// A service's own section, checked; its defaults when the section is absent.
    pub fn section<T>(&self, name: &str) -> Result<T, ConfigError>
    where
        T: DeserializeOwned + Default + Validate,
    {
        let config: T = if self.figment.find_value(name).is_ok() {
            self.figment
                .extract_inner(name)
                .map_err(|e| ConfigError::from_figment(e, Some(name)))?
        } else {
            T::default()
        };
        let mut issues = Vec::new();
        config.validate(name, &mut issues);
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { issues })
        }
    }
}

/// A figment provider over `TRIGGERS_<SECTION>__<FIELD>` variables.
struct EnvVars {
    vars: Vec<(String, String)>,
}

impl EnvVars {
    fn new(env: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = env
            .into_iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(ENV_PREFIX)?;
                key.contains("__").then(|| (key.to_ascii_lowercase(), v))
            })
            .collect();
        Self { vars }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("TRIGGERS_* environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (key, raw) in &self.vars {
            let path: Vec<&str> = key.split("__").collect();
            let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
            insert_path(&mut root, &path, value);
        }
        Ok(Profile::Default.collect(root))
    }
}

fn insert_path(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            } else {
                let mut inner = Dict::new();
                insert_path(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}
