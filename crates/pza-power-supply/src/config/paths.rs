//! Where the config file is: `--config`, else `PZA_POWER_SUPPLY_CONFIG`, else
//! `~/.panduza/pza-power-supply.json5`.

use std::path::PathBuf;

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "PZA_POWER_SUPPLY_CONFIG";

/// The file name of the default config, in `~/.panduza/`.
pub const DEFAULT_FILE_NAME: &str = "pza-power-supply.json5";

/// A resolved config path, and whether it is the default one (the only one
/// that is created when missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: PathBuf,
    pub is_default: bool,
}

/// Resolves the config path from the `--config` value and the environment.
pub fn resolve_config_path(
    cli: Option<PathBuf>,
    env: Option<std::ffi::OsString>,
    home: Option<PathBuf>,
) -> Result<ConfigPath, String> {
    if let Some(path) = cli {
        return Ok(ConfigPath {
            path,
            is_default: false,
        });
    }
    if let Some(value) = env.filter(|v| !v.is_empty()) {
        return Ok(ConfigPath {
            path: PathBuf::from(value),
            is_default: false,
        });
    }
    let home = home.ok_or_else(|| {
        format!("cannot find the home folder for the default config: give --config PATH or set {CONFIG_ENV}")
    })?;
    Ok(ConfigPath {
        path: home.join(".panduza").join(DEFAULT_FILE_NAME),
        is_default: true,
    })
}

/// The user's home folder: `HOME`, or `USERPROFILE` on Windows.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_beats_env_beats_default() {
        let cli = resolve_config_path(
            Some("a.json5".into()),
            Some("b.json5".into()),
            Some("/h".into()),
        )
        .unwrap();
        assert_eq!(
            cli,
            ConfigPath {
                path: "a.json5".into(),
                is_default: false
            }
        );
        let env = resolve_config_path(None, Some("b.json5".into()), Some("/h".into())).unwrap();
        assert_eq!(
            env,
            ConfigPath {
                path: "b.json5".into(),
                is_default: false
            }
        );
        let default = resolve_config_path(None, None, Some("/h".into())).unwrap();
        assert_eq!(
            default.path,
            PathBuf::from("/h/.panduza/pza-power-supply.json5")
        );
        assert!(default.is_default);
        assert!(resolve_config_path(None, None, None).is_err());
    }
}
