//! The SCPI models `rigol-dp832`, `siglent-spd3303x` and `keysight-e36312a`:
//! one driver, a profile per model. A runner drives one channel.
//!
//! # Layout
//!
//! - `profile`: each model as data (channels, ranges, decimals, dialect,
//!   ports, pacing), with the sources they come from;
//! - `protocol`: command lines and reply parsing per dialect, pure code;
//! - `transport`: lines over a TCP socket or a serial port, paced, under
//!   timeouts;
//! - `session`: one connection per instrument, shared by its runners;
//! - `settings`: the runner's `channel`, `tcp` or `serial_port`, and timing;
//! - this file: the models' manifests, and the driver that ties them.
//!
//! The instruments never acknowledge a set, so every set is read back and a
//! value that did not take is `Rejected`.

pub mod profile;
pub mod protocol;
pub mod session;
pub mod settings;
pub mod transport;

use std::sync::Arc;

use async_trait::async_trait;

use super::model::{DriverModel, DriverSettings, InstrumentUse, SettingsError};
use super::{Amps, DriverError, DriverManifest, ErrorKind, PowerSupplyDriver, Volts};
use profile::{ChannelSpec, Profile, PROFILES};
use protocol::Setting;
use session::{Attachment, Session, Sessions};
use settings::ScpiSettings;

/// The SCPI models, sharing one registry of sessions: the runners of one
/// instrument then share its connection.
pub fn models() -> Vec<Arc<dyn DriverModel>> {
    let sessions = Arc::new(Sessions::new());
    PROFILES
        .iter()
        .map(|profile| {
            Arc::new(ScpiModel::new(profile, Arc::clone(&sessions))) as Arc<dyn DriverModel>
        })
        .collect()
}

/// One SCPI model.
pub struct ScpiModel {
    profile: &'static Profile,
    manifest: DriverManifest,
    sessions: Arc<Sessions>,
}

impl ScpiModel {
    pub fn new(profile: &'static Profile, sessions: Arc<Sessions>) -> Self {
        let (voltage_range, current_range) = profile.envelope();
        let decimals =
            |pick: fn(&ChannelSpec) -> usize| profile.channels.iter().map(pick).max().unwrap_or(0);
        ScpiModel {
            profile,
            manifest: DriverManifest {
                model: profile.model,
                aliases: profile.aliases,
                description: profile.description,
                voltage_range,
                current_range,
                voltage_decimals: decimals(|c| c.voltage_decimals),
                current_decimals: decimals(|c| c.current_decimals),
                settings: settings::KEYS,
            },
            sessions,
        }
    }

    pub fn profile(&self) -> &'static Profile {
        self.profile
    }

    fn settings(
        &self,
        settings: &DriverSettings,
    ) -> Result<(ScpiSettings, &'static ChannelSpec), SettingsError> {
        let parsed = ScpiSettings::parse(self.profile, settings)?;
        let spec = self
            .profile
            .channel(parsed.channel)
            .ok_or_else(|| SettingsError {
                key: "channel".into(),
                message: format!(
                    "{} is not a channel of the {}",
                    parsed.channel, self.profile.model
                ),
            })?;
        Ok((parsed, spec))
    }
}

impl DriverModel for ScpiModel {
    fn manifest(&self) -> &DriverManifest {
        &self.manifest
    }

    fn check_settings(&self, settings: &DriverSettings) -> Result<(), SettingsError> {
        self.settings(settings).map(|_| ())
    }

    fn runner_manifest(&self, settings: &DriverSettings) -> DriverManifest {
        match self.settings(settings) {
            Ok((_, spec)) => DriverManifest {
                voltage_range: spec.voltage,
                current_range: spec.current,
                voltage_decimals: spec.voltage_decimals,
                current_decimals: spec.current_decimals,
                ..self.manifest.clone()
            },
            // Checked at config load; `instantiate` refuses them anyway.
            Err(_) => self.manifest.clone(),
        }
    }

    fn range_owner(&self, settings: &DriverSettings) -> String {
        match self.settings(settings) {
            Ok((parsed, _)) => format!("{} channel {}", self.profile.model, parsed.channel),
            Err(_) => self.profile.model.to_string(),
        }
    }

    fn instrument_use(&self, settings: &DriverSettings) -> Option<InstrumentUse> {
        let (parsed, _) = self.settings(settings).ok()?;
        Some(InstrumentUse {
            instrument: parsed.endpoint.to_string(),
            part: format!("channel {}", parsed.channel),
            shared_settings: format!(
                "model {}, pacing_ms {}, read_timeout_ms {}{}",
                self.profile.model,
                parsed.timing.pacing.as_millis(),
                parsed.timing.read_timeout.as_millis(),
                match parsed.endpoint {
                    settings::Endpoint::Serial { baud_rate, .. } =>
                        format!(", baud_rate {baud_rate}"),
                    settings::Endpoint::Tcp { .. } => String::new(),
                }
            ),
        })
    }

    fn instantiate(
        &self,
        runner: &str,
        settings: &DriverSettings,
    ) -> Result<Box<dyn PowerSupplyDriver>, DriverError> {
        let (parsed, spec) = self
            .settings(settings)
            .map_err(|e| DriverError::new(ErrorKind::Config, e.to_string()))?;
        let session = self
            .sessions
            .session(self.profile, &parsed.endpoint, parsed.timing)?;
        Ok(Box::new(ScpiDriver {
            runner: runner.to_string(),
            profile: self.profile,
            channel: parsed.channel,
            spec: *spec,
            session,
            attachment: None,
            verified: None,
        }))
    }
}

/// A driver for one channel of an SCPI instrument. It attaches to the
/// instrument's session at `initialize`, not before, so building it does no
/// I/O.
pub struct ScpiDriver {
    runner: String,
    profile: &'static Profile,
    channel: u8,
    spec: ChannelSpec,
    session: Arc<Session>,
    attachment: Option<Attachment>,
    /// What the last set read back, for the get that comes right after it
    /// (the runner reads every value back after a set): one round trip less
    /// per command. Any other request clears it.
    verified: Option<Verified>,
}

/// A setting just read back by a set.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verified {
    Setting(Setting, f64),
    Output(bool),
}

impl ScpiDriver {
    fn attachment(&self) -> Result<&Attachment, DriverError> {
        self.attachment.as_ref().ok_or_else(|| {
            DriverError::new(
                ErrorKind::NotConnected,
                format!(
                    "{} channel {} not initialized",
                    self.profile.model, self.channel
                ),
            )
        })
    }

    async fn query(&self, query: &str) -> Result<String, DriverError> {
        self.session.query(self.attachment()?, query).await
    }

    async fn setting(&mut self, setting: Setting) -> Result<f64, DriverError> {
        if let Some(Verified::Setting(verified, value)) = self.verified.take() {
            if verified == setting {
                return Ok(value);
            }
        }
        let dialect = self.profile.dialect;
        let reply = self
            .query(&dialect.setpoint_query(self.channel, setting))
            .await?;
        Ok(dialect.parse_setpoint(self.channel, setting, &reply)?)
    }

    async fn set_setting(&mut self, setting: Setting, requested: f64) -> Result<(), DriverError> {
        self.verified = None;
        let (range, decimals) = match setting {
            Setting::Voltage => (self.spec.voltage, self.spec.voltage_decimals),
            Setting::Current => (self.spec.current, self.spec.current_decimals),
        };
        let dialect = self.profile.dialect;
        let lines = dialect.set(self.channel, setting, requested, range, decimals)?;
        let query = dialect.setpoint_query(self.channel, setting);
        let reply = self
            .session
            .send_then_query(self.attachment()?, &lines, &query)
            .await?;
        let read_back = dialect.parse_setpoint(self.channel, setting, &reply)?;
        if protocol::same_setting(requested, read_back, decimals) {
            self.verified = Some(Verified::Setting(setting, read_back));
            Ok(())
        } else {
            Err(DriverError::new(
                ErrorKind::Rejected,
                format!(
                    "{} was not applied: channel {} reads {read_back:.decimals$} {}",
                    lines.join("; "),
                    self.channel,
                    setting.unit()
                ),
            ))
        }
    }

    async fn measure(&mut self, what: Setting) -> Result<f64, DriverError> {
        self.verified = None;
        let dialect = self.profile.dialect;
        let reply = self
            .query(&dialect.measure_query(self.channel, what))
            .await?;
        Ok(dialect.parse_measure(self.channel, what, &reply)?)
    }

    async fn read_output(&mut self) -> Result<bool, DriverError> {
        self.verified = None;
        let dialect = self.profile.dialect;
        let reply = self.query(&dialect.output_query(self.channel)).await?;
        Ok(dialect.parse_output(self.channel, &reply)?)
    }
}

#[async_trait]
impl PowerSupplyDriver for ScpiDriver {
    async fn initialize(&mut self) -> Result<(), DriverError> {
        self.verified = None;
        // A driver initialized again lets go of its old hold first.
        self.attachment = None;
        let (attachment, identity) = self.session.attach().await?;
        tracing::info!(
            runner = %self.runner,
            instrument = %self.session.endpoint(),
            channel = self.channel,
            identity = identity.map(|i| i.to_string()).unwrap_or_else(|| "connection shared".into()),
            "{} attached",
            self.profile.model
        );
        self.attachment = Some(attachment);
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), DriverError> {
        self.verified = None;
        if let Some(attachment) = self.attachment.take() {
            self.session.release(attachment).await;
        }
        Ok(())
    }

    async fn output_enabled(&mut self) -> Result<bool, DriverError> {
        if let Some(Verified::Output(enabled)) = self.verified.take() {
            return Ok(enabled);
        }
        self.read_output().await
    }

    async fn set_output_enabled(&mut self, enabled: bool) -> Result<(), DriverError> {
        self.verified = None;
        let dialect = self.profile.dialect;
        let lines = dialect.set_output(self.channel, enabled);
        let query = dialect.output_query(self.channel);
        let reply = self
            .session
            .send_then_query(self.attachment()?, &lines, &query)
            .await?;
        if dialect.parse_output(self.channel, &reply)? == enabled {
            self.verified = Some(Verified::Output(enabled));
            Ok(())
        } else {
            Err(DriverError::new(
                ErrorKind::Rejected,
                format!(
                    "{} was not applied: channel {} reads the output {}",
                    lines.join("; "),
                    self.channel,
                    if enabled { "off" } else { "on" }
                ),
            ))
        }
    }

    async fn voltage_setpoint(&mut self) -> Result<Volts, DriverError> {
        self.setting(Setting::Voltage).await.map(Volts)
    }

    async fn set_voltage_setpoint(&mut self, voltage: Volts) -> Result<(), DriverError> {
        self.set_setting(Setting::Voltage, voltage.0).await
    }

    async fn current_limit(&mut self) -> Result<Amps, DriverError> {
        self.setting(Setting::Current).await.map(Amps)
    }

    async fn set_current_limit(&mut self, current: Amps) -> Result<(), DriverError> {
        self.set_setting(Setting::Current, current.0).await
    }

    async fn measure_voltage(&mut self) -> Result<Volts, DriverError> {
        self.measure(Setting::Voltage).await.map(Volts)
    }

    async fn measure_current(&mut self) -> Result<Amps, DriverError> {
        self.measure(Setting::Current).await.map(Amps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::DriverFactory;
    use serde_json::json;

    #[test]
    fn registered_under_their_names_and_aliases() {
        let factory = DriverFactory::with_builtin_models();
        for (name, model) in [
            ("rigol-dp832", "rigol-dp832"),
            ("dp832", "rigol-dp832"),
            ("spd3303x", "siglent-spd3303x"),
            ("e36312a", "keysight-e36312a"),
        ] {
            assert_eq!(factory.model(name).unwrap().manifest().model, model);
        }
        let model = factory.model("dp832").unwrap();
        let m = model.manifest();
        assert_eq!((m.voltage_range.max, m.current_range.max), (30.0, 3.0));
        let ch3 = json!({"channel": 3, "tcp": {"addr": "127.0.0.1"}});
        let ch3 = model.runner_manifest(ch3.as_object().unwrap());
        assert_eq!((ch3.voltage_range.max, ch3.current_range.max), (5.0, 3.0));
        assert_eq!((ch3.voltage_decimals, ch3.current_decimals), (3, 3));
    }

    #[test]
    fn an_instrument_is_one_model() {
        let factory = DriverFactory::with_builtin_models();
        let settings = json!({"channel": 1, "tcp": {"addr": "127.0.0.1", "port": 9}});
        let settings = settings.as_object().unwrap();
        factory.instantiate("a", "rigol-dp832", settings).unwrap();
        factory.instantiate("b", "rigol-dp832", settings).unwrap();
        let err = factory
            .instantiate("c", "keysight-e36312a", settings)
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("rigol-dp832"), "{err}");
    }

    #[tokio::test]
    async fn calls_before_initialize_are_not_connected() {
        let factory = DriverFactory::with_builtin_models();
        let settings = json!({"channel": 2, "tcp": {"addr": "127.0.0.1", "port": 9}});
        let mut driver = factory
            .instantiate("r", "e36312a", settings.as_object().unwrap())
            .unwrap();
        let err = driver.measure_voltage().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotConnected);
    }
}
