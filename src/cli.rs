//! The command line: one config read from TOML with flag overrides, and one function per subcommand.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::Utc;
use clap::{Parser, Subcommand};
use serde_json::json;

use facegate::config::{Config, DoorBackendName, Overrides};
use facegate::decision::{Freshness, FreshnessRules, Status};
use facegate::enrollment::{self, Candidate, Verdict};
use facegate::frame::CheckedImage;
use facegate::gallery::{EmbedderId, Gallery, GalleryError, GalleryFile};
use facegate::gallery_bundle;
use facegate::permission;
use facegate::recognition::RecognitionError;
use facegate::record::{DecisionRecord, Endpoint, RequestIds};
use facegate::service::{frame_refusal, judge};
use facegate::vision::{PipelineModels, Recognizer};

const SYSTEM_CONFIG: &str = "/etc/facegate/facegate.toml";

#[derive(Parser)]
#[command(
    name = "facegate",
    version,
    about = "Door-access face recognition for the Raspberry Pi"
)]
pub struct Cli {
    /// Config file [default: /etc/facegate/facegate.toml if it exists, else built-in defaults]
    #[arg(long, global = true, env = "FACEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `state_dir` (gallery, snapshots, audit log)
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Overrides `models_dir`. Left at its default, models are also looked for in a checkout's assets/models
    #[arg(long, global = true, env = "FACEGATE_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the door daemon: HTTP for the tablet, relay, audit log, snapshots
    Serve {
        /// Overrides `http.listen`, e.g. 127.0.0.1:8080 (port 0 picks a free port)
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Overrides `door.backend`
        #[arg(long, value_parser = parse_door)]
        door: Option<DoorBackendName>,
    },
    /// Enrol a person from one or more photos, each showing exactly one face
    Enroll {
        #[arg(long)]
        name: String,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Identify the largest face in each image; prints one JSON line per image
    Identify {
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// List or remove enrolled people, set who may enter when; export, sign and import the gallery of
    /// a building
    Gallery {
        #[command(subcommand)]
        action: GalleryAction,
    },
    /// Groups of people sharing weekly hours (`gallery set NAME --group G`)
    Groups {
        #[command(subcommand)]
        action: GroupsAction,
    },
    /// Check a config file and print the configuration in force
    CheckConfig,
    /// Check that the configured models are the pinned files and load in this OpenCV
    CheckModels,
    /// Drive the relay
    Door {
        #[command(subcommand)]
        action: DoorAction,
    },
    /// The building admin's pages at /admin/
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// MQTT helpers (see docs/mqtt.md)
    Mqtt {
        #[command(subcommand)]
        action: MqttAction,
    },
    /// Visitor codes: generate them in advance, show the ones valid on a day, revoke one
    Codes {
        #[command(subcommand)]
        action: CodesAction,
    },
    /// The tablet's TLS certificate
    Tls {
        #[command(subcommand)]
        action: TlsAction,
    },
    /// Tablets running the kiosk page: pair one, list them, revoke one (the running daemon follows at once)
    Tablets {
        #[command(subcommand)]
        action: TabletsAction,
    },
}

#[derive(Subcommand)]
enum TabletsAction {
    /// Print a one-time pairing link (valid 10 minutes) and its QR code for the tablet NAME; a tablet
    /// already paired keeps working until the new link is used
    Add {
        name: String,
        /// The host name or address the tablet reaches the Pi at [default: the listening address, or
        /// the address of the default route]
        #[arg(long)]
        host: Option<String>,
    },
    /// Name, paired, last seen and address of every tablet
    List,
    /// Unpair NAME: its token stops working at once
    Revoke { name: String },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Store the admin password (Argon2id hash in the state dir): prompted on a terminal, else one
    /// line read from stdin
    SetPassword,
}

#[derive(Subcommand)]
enum CodesAction {
    /// Make codes for every working day from --from to --to (replacing what those days had);
    /// weekly codes are valid on every working day of their ISO week
    Generate {
        #[arg(long, value_parser = parse_date)]
        from: chrono::NaiveDate,
        #[arg(long, value_parser = parse_date)]
        to: chrono::NaiveDate,
        /// Codes valid on one day only, per day
        #[arg(long, default_value_t = 3)]
        daily: usize,
        /// Codes valid all week, per ISO week
        #[arg(long, default_value_t = 1)]
        weekly: usize,
        #[arg(long, default_value_t = 6)]
        digits: u32,
    },
    /// Print the codes valid on a date, to hand out
    Show {
        /// YYYY-MM-DD [default: today, local time]
        #[arg(long, value_parser = parse_date)]
        date: Option<chrono::NaiveDate>,
        /// Print {"date", "daily": [...], "weekly": [...]}
        #[arg(long)]
        json: bool,
    },
    /// Remove a code from every day and week that has it
    Revoke { code: String },
}

fn parse_date(value: &str) -> Result<chrono::NaiveDate, String> {
    facegate::codes::book::parse_date(value).map_err(|err| err.to_string())
}

#[derive(Subcommand)]
enum TlsAction {
    /// Print the certificate's public-key pin (sha256/<base64>) for the original app, generating the
    /// door's certificate if needed
    Pin,
    /// Print the PEM certificate to install on a tablet as a trusted CA (the door's own CA, or the
    /// root of the configured chain), generating the door's certificate if needed
    Cert,
}

#[derive(Subcommand)]
enum GalleryAction {
    List {
        /// Print {"people": [{name, samples, valid_from, valid_until, schedule, suspended, groups}],
        /// "groups": {NAME: {schedule}}}
        #[arg(long)]
        json: bool,
    },
    Remove {
        name: String,
    },
    /// Set who may enter when: what is not given stays as it was. Dates are local days in `timezone`,
    /// inclusive; `none` clears one. SPEC is weekly hours such as "mon-fri 07:00-19:00; sat 09:00-13:00"
    /// (a window may run past midnight: "fri 22:00-02:00"). Without own hours a person has their
    /// groups' hours, and without groups any hour
    Set {
        name: String,
        /// First day of access (YYYY-MM-DD, or none)
        #[arg(long, value_name = "DATE")]
        valid_from: Option<String>,
        /// Last day of access (YYYY-MM-DD, or none)
        #[arg(long, value_name = "DATE")]
        valid_until: Option<String>,
        /// The person's own weekly hours
        #[arg(long, value_name = "SPEC", conflicts_with = "no_schedule")]
        schedule: Option<String>,
        /// Remove the person's own hours (their groups' hours apply, else any hour)
        #[arg(long)]
        no_schedule: bool,
        /// Refuse the person at the door without removing them
        #[arg(long, conflicts_with = "resume")]
        suspend: bool,
        /// Lift a suspension
        #[arg(long)]
        resume: bool,
        /// The person's groups (repeat for several), replacing the ones they had
        #[arg(long = "group", value_name = "G", conflicts_with = "no_groups")]
        groups: Vec<String>,
        /// Take the person out of every group
        #[arg(long)]
        no_groups: bool,
    },
    /// Write the gallery as a versioned export (`-` for stdout), signed with the building key if given
    Export {
        file: PathBuf,
        /// Secret key file from `gallery keygen`
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// Days the export stays valid: doors refuse it afterwards, so export again before then
        #[arg(long, value_name = "DAYS", default_value_t = gallery_bundle::DEFAULT_VALID_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=3650))]
        valid_days: u32,
    },
    /// Load an export; refused if made for another embedder, older than this gallery, or unsigned
    /// while mqtt.gallery_public_key is set
    Import {
        file: PathBuf,
    },
    /// Create a building key: the secret goes to FILE (mode 0600), the public key is printed
    Keygen {
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum GroupsAction {
    /// Create a group or change its weekly hours (SPEC as in `gallery set --schedule`)
    Set {
        name: String,
        #[arg(long, value_name = "SPEC")]
        schedule: String,
    },
    /// Remove a group; its members keep their own hours, and get none from it
    Remove {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum MqttAction {
    /// Print a signed command for this door (mqtt.door_id, mqtt.command_secret) to publish on
    /// <topic_prefix>/<door_id>/command, e.g. with mosquitto_pub -s
    Command {
        #[arg(value_parser = parse_action)]
        action: facegate::mqtt::command::Action,
        /// Who sends it, for the door's audit log
        #[arg(long, default_value = "cli")]
        origin: String,
        /// The door it is for [default: mqtt.door_id]
        #[arg(long)]
        door: Option<String>,
    },
}

fn parse_action(value: &str) -> Result<facegate::mqtt::command::Action, String> {
    use facegate::mqtt::command::Action;
    match value {
        "lock" => Ok(Action::Lock),
        "unlock" => Ok(Action::Unlock),
        "clear" => Ok(Action::Clear),
        other => Err(format!(
            "`{other}` is not a command: use lock, unlock or clear"
        )),
    }
}

#[derive(Subcommand)]
enum DoorAction {
    /// Drive the relay to its locked level and exit (systemd runs this after every stop)
    Lock,
}

fn parse_door(value: &str) -> Result<DoorBackendName, String> {
    match value {
        "sim" => Ok(DoorBackendName::Sim),
        "gpio" => Ok(DoorBackendName::Gpio),
        other => Err(format!("`{other}` is not a door backend: use sim or gpio")),
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let mut overrides = Overrides {
        state_dir: cli.state_dir.clone(),
        models_dir: cli.models_dir.clone(),
        ..Overrides::default()
    };
    if let Command::Serve { listen, door } = &cli.command {
        overrides.listen = *listen;
        overrides.door = *door;
    }
    let config = load_config(cli.config.as_deref(), &overrides)?;
    match cli.command {
        Command::Serve { .. } => facegate::daemon::run(config),
        Command::Enroll { name, images } => enroll(&config, &name, &images),
        Command::Identify { images } => identify(&config, &images),
        Command::Gallery { action } => gallery(&config, action),
        Command::Groups { action } => groups(&config, action),
        Command::CheckConfig => {
            // The holidays file is read as `serve` will read it.
            facegate::codes::Calendar::from_config(&config.codes)?;
            let mut shown = config.clone();
            for secret in [
                &mut shown.http.token,
                &mut shown.mqtt.password,
                &mut shown.mqtt.command_secret,
            ] {
                if !secret.is_empty() {
                    *secret = "(set, not shown)".into();
                }
            }
            println!("{shown:#?}");
            println!("config is valid");
            Ok(())
        }
        Command::CheckModels => check_models(&config),
        Command::Door {
            action: DoorAction::Lock,
        } => facegate::daemon::lock_door(&config),
        Command::Admin {
            action: AdminAction::SetPassword,
        } => set_admin_password(&config),
        Command::Mqtt {
            action:
                MqttAction::Command {
                    action,
                    origin,
                    door,
                },
        } => mqtt_command(&config, action, &origin, door),
        Command::Codes { action } => codes(&config, action),
        Command::Tablets { action } => tablets(&config, action),
        Command::Tls { action } => {
            if !config.http.tls.enabled {
                anyhow::bail!("http.tls.enabled is false in this config: the daemon serves plain HTTP, there is no certificate. Set enabled = true under [http.tls] first");
            }
            let files = facegate::front::tls::TlsFiles::of(&config);
            files.ensure(&facegate::front::tls::certificate_names_of(&config))?;
            match action {
                TlsAction::Pin => println!("{}", files.pin()?),
                TlsAction::Cert => print_all(&files.trust_pem()?)?,
            }
            Ok(())
        }
    }
}

/// Reads the new admin password: twice without echo on a terminal, one line from a pipe.
fn set_admin_password(config: &Config) -> Result<()> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = read_hidden("New admin password: ")?;
        let second = read_hidden("Repeat it: ")?;
        anyhow::ensure!(
            first == second,
            "the two passwords differ; nothing was changed"
        );
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    let path = facegate::admin::password::store(&config.state_dir, &password)?;
    println!("admin password stored in {}", path.display());
    Ok(())
}

/// One line from the terminal with echo switched off (restored even when reading fails).
fn read_hidden(prompt: &str) -> Result<String> {
    print!("{prompt}");
    std::io::stdout().flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for our own stdin, a terminal.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above; stdin is our descriptor for the life of the process.
    anyhow::ensure!(
        unsafe { libc::tcgetattr(fd, &mut saved) } == 0,
        "cannot read the terminal's settings"
    );
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    // SAFETY: sets our own terminal's flags from a copy of its settings.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    println!();
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn load_config(path: Option<&Path>, overrides: &Overrides) -> Result<Config> {
    let config = match path {
        Some(path) => Config::load(path)?,
        None if Path::new(SYSTEM_CONFIG).exists() => Config::load(Path::new(SYSTEM_CONFIG))?,
        None => {
            log::info!("no --config given and no {SYSTEM_CONFIG}: using built-in defaults");
            Config::default()
        }
    };
    Ok(config.with_overrides(overrides)?)
}

struct Engine {
    models: PipelineModels,
    recognizer: Recognizer,
}

fn load_engine(config: &Config) -> Result<Engine> {
    let models = PipelineModels::resolve(&config.recognition, &config.models_dir)
        .context("the models are not usable")?;
    let recognizer =
        Recognizer::load(&models, &config.recognition).context("the models did not load")?;
    Ok(Engine { models, recognizer })
}

/// As `load_engine`, with the liveness models when `liveness.enabled`, for commands that decide.
fn load_deciding_engine(config: &Config) -> Result<Engine> {
    let models = PipelineModels::resolve(&config.recognition, &config.models_dir)
        .and_then(|models| models.with_liveness(&config.liveness))
        .context("the models are not usable")?;
    let recognizer =
        Recognizer::load(&models, &config.recognition).context("the models did not load")?;
    Ok(Engine { models, recognizer })
}

fn read_image(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn enroll(config: &Config, name: &str, images: &[PathBuf]) -> Result<()> {
    let mut engine = load_engine(config)?;
    let file = GalleryFile::of(config, &EmbedderId::of(&engine.models.embedder));
    file.edit(|gallery| enroll_into(config, &mut engine, gallery, name, images))
}

/// Enrols into `gallery` (the caller holds its lock and saves it).
fn enroll_into(
    config: &Config,
    engine: &mut Engine,
    gallery: &mut Gallery,
    name: &str,
    images: &[PathBuf],
) -> Result<()> {
    let contents = images
        .iter()
        .map(|p| read_image(p))
        .collect::<Result<Vec<_>>>()?;
    let candidates: Vec<Candidate> = images
        .iter()
        .zip(&contents)
        .map(|(path, bytes)| Candidate {
            source: file_name(path),
            bytes,
        })
        .collect();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let report = enrollment::enroll(
        &mut engine.recognizer,
        gallery,
        name,
        &candidates,
        &config.frame,
        config.recognition.lookalike_warning,
        &now,
    )?;
    for (source, verdict) in &report.verdicts {
        match verdict {
            Verdict::Accepted { face_score } => {
                println!("accepted {source} (face score {face_score:.2})")
            }
            Verdict::Rejected { reason } => println!("rejected {source}: {reason}"),
        }
    }
    for warning in enrollment::warnings(&report, name, engine.models.threshold(&config.recognition))
    {
        println!("warning: {warning}");
    }
    let thumbnails = enrollment::thumbnail_dir(&config.state_dir);
    enrollment::store_thumbnails(&thumbnails, &report)
        .with_context(|| format!("cannot store face thumbnails in {}", thumbnails.display()))?;
    println!(
        "enrolled {name}: {} of {} images; the gallery now holds {} people",
        report.accepted(),
        images.len(),
        gallery.people().len()
    );
    Ok(())
}

/// Prints, for each image, the record the daemon would make of it (as its audit line), with `file`.
fn identify(config: &Config, images: &[PathBuf]) -> Result<()> {
    let mut engine = load_deciding_engine(config)?;
    let gallery = Gallery::load(
        &config.gallery_path(),
        &EmbedderId::of(&engine.models.embedder),
    )?;
    let threshold = engine.models.threshold(&config.recognition);
    let zone = config
        .time_zone()
        .map_err(|problem| anyhow::anyhow!("timezone: {problem}"))?;
    let rules = FreshnessRules::FOR_FILES;
    let ids = RequestIds::default();
    let mut out = std::io::stdout().lock();
    for path in images {
        let bytes = read_image(path)?;
        let received_at = Instant::now();
        let freshness = Freshness::of_frame(received_at, Utc::now(), None, rules);
        let mut record = DecisionRecord::new(&ids.next(), Endpoint::Identify, Status::Error);
        match CheckedImage::check(bytes, &config.frame) {
            Ok(image) => {
                let judged = judge(
                    &mut engine.recognizer,
                    &gallery,
                    &zone,
                    threshold,
                    config.liveness.threshold,
                    &image,
                    freshness,
                    rules,
                    received_at,
                    None,
                    &mut record,
                );
                match judged {
                    Ok(_) => {}
                    Err(RecognitionError::Frame(err)) => record.refusal = Some(frame_refusal(&err)),
                    Err(err) => {
                        return Err(err)
                            .with_context(|| format!("recognition failed on {}", path.display()))
                    }
                }
            }
            Err(refused) => record.refusal = Some(frame_refusal(&refused.error)),
        }
        if record.refusal.is_some() {
            record.status = Status::Error;
        }
        let mut line = record.audit_line();
        line["file"] = json!(path.display().to_string());
        if let Err(err) = writeln!(out, "{line}") {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(err).context("cannot write the results");
        }
    }
    Ok(())
}

fn gallery(config: &Config, action: GalleryAction) -> Result<()> {
    if let GalleryAction::Keygen { file } = &action {
        let key = gallery_bundle::generate_key()?;
        gallery_bundle::write_secret_key(file, &key)?;
        println!(
            "secret key written to {} (keep it off the doors); put this in every door's [mqtt] section:",
            file.display()
        );
        println!(
            "gallery_public_key = \"{}\"",
            gallery_bundle::public_key_text(&key.verifying_key())
        );
        return Ok(());
    }
    let models = PipelineModels::resolve(&config.recognition, &config.models_dir)
        .context("the models are not usable")?;
    let file = GalleryFile::of(config, &EmbedderId::of(&models.embedder));
    let path = file.path().to_path_buf();
    let gallery = file.load()?;
    match action {
        GalleryAction::List { json: true } => {
            let people: Vec<_> = gallery
                .people()
                .iter()
                .map(|person| {
                    let p = &person.permissions;
                    json!({
                        "name": person.name,
                        "samples": person.samples.len(),
                        "valid_from": p.valid_from,
                        "valid_until": p.valid_until,
                        "schedule": p.schedule,
                        "suspended": p.suspended,
                        "groups": p.groups,
                    })
                })
                .collect();
            println!("{}", json!({"people": people, "groups": gallery.groups()}));
        }
        GalleryAction::List { json: false } => {
            for person in gallery.people() {
                let sources: Vec<&str> = person.samples.iter().map(|s| s.source.as_str()).collect();
                println!(
                    "{}\t{} samples\t{}\t{}",
                    person.name,
                    person.samples.len(),
                    permissions_summary(&person.permissions),
                    sources.join(", ")
                );
            }
            println!(
                "{} people, {} samples, embedder {} ({})",
                gallery.people().len(),
                gallery.sample_count(),
                gallery.embedder().name,
                path.display()
            );
        }
        GalleryAction::Export {
            file,
            sign,
            valid_days,
        } => {
            let now = chrono::Utc::now();
            let sequence =
                gallery_bundle::next_sequence(&gallery, now.timestamp_millis().max(0) as u64);
            let exported_at = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let valid_until = (now + chrono::Duration::days(i64::from(valid_days)))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let mut bytes =
                gallery_bundle::export(&gallery, sequence, &exported_at, Some(&valid_until));
            if let Some(key) = &sign {
                bytes = gallery_bundle::sign(&bytes, &gallery_bundle::read_secret_key(key)?);
            }
            if file.as_os_str() == "-" {
                std::io::stdout()
                    .write_all(&bytes)
                    .context("cannot write the export")?;
            } else {
                std::fs::write(&file, &bytes)
                    .with_context(|| format!("cannot write {}", file.display()))?;
                eprintln!(
                    "exported {} people as sequence {sequence}{}, valid until {valid_until}, to {}",
                    gallery.people().len(),
                    if sign.is_some() { ", signed" } else { "" },
                    file.display()
                );
            }
        }
        GalleryAction::Import { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let key = config
                .gallery_public_key()
                .map_err(|problem| anyhow::anyhow!("mqtt.gallery_public_key: {problem}"))?;
            match gallery_bundle::import_into(
                &bytes,
                key.as_ref(),
                gallery.embedder(),
                &file,
                &path,
                &config.state_dir.join(gallery_bundle::DOOR_STATE),
                chrono::Utc::now(),
            )? {
                Some(opened) => println!(
                    "imported sequence {} ({}): {} people into {}",
                    opened.sequence,
                    if opened.signed { "signed" } else { "unsigned" },
                    opened.gallery.people().len(),
                    path.display()
                ),
                None => println!("{} already holds this gallery", path.display()),
            }
        }
        GalleryAction::Keygen { .. } => unreachable!("handled before the models are resolved"),
        GalleryAction::Set {
            name,
            valid_from,
            valid_until,
            schedule,
            no_schedule,
            suspend,
            resume,
            groups,
            no_groups,
        } => {
            let parse_day = |text: Option<String>| -> Result<Option<Option<jiff::civil::Date>>> {
                text.map(|text| match text.trim() {
                    "none" | "" => Ok(None),
                    day => permission::parse_date(day)
                        .map(Some)
                        .map_err(anyhow::Error::msg),
                })
                .transpose()
            };
            let valid_from = parse_day(valid_from).context("--valid-from")?;
            let valid_until = parse_day(valid_until).context("--valid-until")?;
            let schedule = schedule
                .map(|spec| permission::WeeklyHours::parse(&spec))
                .transpose()
                .context("--schedule")?;
            let set = file.edit(|gallery| {
                let mut permissions = gallery
                    .person(&name)
                    .ok_or_else(|| GalleryError::NotEnrolled(name.clone()))?
                    .permissions
                    .clone();
                if let Some(day) = valid_from {
                    permissions.valid_from = day;
                }
                if let Some(day) = valid_until {
                    permissions.valid_until = day;
                }
                if schedule.is_some() || no_schedule {
                    permissions.schedule = schedule;
                }
                if suspend || resume {
                    permissions.suspended = suspend;
                }
                if !groups.is_empty() || no_groups {
                    permissions.groups = groups;
                }
                gallery.set_permissions(&name, permissions.clone())?;
                Ok::<_, GalleryError>(permissions)
            })?;
            println!("{name}: {}", permissions_summary(&set));
        }
        GalleryAction::Remove { name } => {
            let removed = file.edit(|gallery| gallery.remove(&name))?;
            enrollment::remove_thumbnails(
                &enrollment::thumbnail_dir(&config.state_dir),
                &removed.samples,
            );
            println!(
                "removed {} ({} samples)",
                removed.name,
                removed.samples.len()
            );
        }
    }
    Ok(())
}

/// One line saying who may enter when: `valid 2026-03-01..2026-03-31, mon-fri 07:00-19:00, groups cleaners, suspended`.
fn permissions_summary(permissions: &permission::Permissions) -> String {
    let mut parts = Vec::new();
    if permissions.valid_from.is_some() || permissions.valid_until.is_some() {
        let day = |d: Option<jiff::civil::Date>| d.map_or(String::new(), |d| d.to_string());
        parts.push(format!(
            "valid {}..{}",
            day(permissions.valid_from),
            day(permissions.valid_until)
        ));
    }
    if let Some(hours) = &permissions.schedule {
        parts.push(hours.to_string());
    }
    if !permissions.groups.is_empty() {
        parts.push(format!("groups {}", permissions.groups.join(",")));
    }
    if permissions.suspended {
        parts.push("suspended".into());
    }
    if parts.is_empty() {
        "any time".into()
    } else {
        parts.join(", ")
    }
}

fn groups(config: &Config, action: GroupsAction) -> Result<()> {
    let models = PipelineModels::resolve(&config.recognition, &config.models_dir)
        .context("the models are not usable")?;
    let file = GalleryFile::of(config, &EmbedderId::of(&models.embedder));
    match action {
        GroupsAction::Set { name, schedule } => {
            let hours = permission::WeeklyHours::parse(&schedule).context("--schedule")?;
            file.edit(|gallery| gallery.set_group(&name, hours))?;
            println!("group {name}: {schedule}");
        }
        GroupsAction::Remove { name } => {
            file.edit(|gallery| gallery.remove_group(&name))?;
            println!("group {name} removed");
        }
        GroupsAction::List => {
            let gallery = file.load()?;
            for (name, group) in gallery.groups() {
                let members = gallery
                    .people()
                    .iter()
                    .filter(|p| p.permissions.groups.contains(name))
                    .count();
                println!("{name}\t{}\t{members} members", group.schedule);
            }
        }
    }
    Ok(())
}

fn mqtt_command(
    config: &Config,
    action: facegate::mqtt::command::Action,
    origin: &str,
    door: Option<String>,
) -> Result<()> {
    use facegate::mqtt::command::{sign, CommandBody};
    let secret = config.mqtt_command_secret().context(
        "no usable command secret: set mqtt.command_secret (16+ characters) or FACEGATE_MQTT_COMMAND_SECRET",
    )?;
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|err| anyhow::anyhow!("no random source: {err}"))?;
    let body = CommandBody {
        action,
        door_id: door.unwrap_or_else(|| config.mqtt.door_id.clone()),
        issued_at_ms: chrono::Utc::now().timestamp_millis(),
        nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
        origin: origin.to_string(),
    };
    println!("{}", sign(&body, secret.as_bytes()));
    Ok(())
}

fn check_models(config: &Config) -> Result<()> {
    let engine = load_deciding_engine(config)?;
    let (major, minor) = facegate::vision::opencv_version();
    println!("OpenCV {major}.{minor}");
    println!(
        "detector {} ok ({})",
        engine.models.detector.name,
        engine.models.detector.path.display()
    );
    println!(
        "embedder {} ok ({}), threshold {}",
        engine.models.embedder.name,
        engine.models.embedder.path.display(),
        engine.models.threshold(&config.recognition)
    );
    match &engine.models.liveness {
        Some(liveness) => {
            for model in &liveness.models {
                println!(
                    "liveness {} ok ({}), scale {}",
                    model.name,
                    model.path.display(),
                    model.contract.scale
                );
            }
            println!(
                "liveness threshold {}, min_face_px {}",
                config.liveness.threshold, liveness.min_face_px
            );
        }
        None => println!("liveness off (liveness.enabled = false)"),
    }
    Ok(())
}

fn codes(config: &Config, action: CodesAction) -> Result<()> {
    use facegate::codes::book::{describe_date, os_random, GenerateSpec};
    use facegate::codes::{Calendar, CodeStore};
    let calendar = Calendar::from_config(&config.codes)?;
    let store = CodeStore::new(config.codes_path());
    match action {
        CodesAction::Generate {
            from,
            to,
            daily,
            weekly,
            digits,
        } => {
            let spec = GenerateSpec {
                from,
                to,
                daily,
                weekly,
                digits,
            };
            let report = store.update(|book| book.generate(&calendar, spec, &mut os_random))?;
            let dates = |dates: &[chrono::NaiveDate]| {
                dates
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !report.replaced_days.is_empty() {
                println!(
                    "replaced the daily codes of {}",
                    dates(&report.replaced_days)
                );
            }
            if !report.replaced_weeks.is_empty() {
                println!(
                    "replaced the weekly codes of {} (valid on every working day of the week)",
                    report.replaced_weeks.join(", ")
                );
            }
            println!(
                "generated {daily} daily codes for each of {} working days and {weekly} weekly codes for each of {} weeks from {from} to {to} into {}; hand them out with facegate codes show --date YYYY-MM-DD",
                report.days,
                report.weeks,
                store.path().display()
            );
        }
        CodesAction::Show { date, json } => {
            let date = date.unwrap_or_else(|| config.local_today());
            let valid = store.load()?.valid_on(&calendar, date);
            if json {
                println!("{}", serde_json::to_string(&valid)?);
                return Ok(());
            }
            println!("{}", describe_date(date));
            if let Some(why) = calendar.closed_because(date) {
                println!("{why}: no code is valid");
                return Ok(());
            }
            println!("daily:  {}", valid.daily.join(" "));
            println!("weekly: {}", valid.weekly.join(" "));
            if valid.daily.is_empty() && valid.weekly.is_empty() {
                println!("no codes stored for this day: run facegate codes generate");
            }
        }
        CodesAction::Revoke { code } => {
            let found = store.update(|book| Ok(book.revoke(&code)))?;
            if found.is_empty() {
                anyhow::bail!(
                    "no stored code matches; check it with facegate codes show --date YYYY-MM-DD"
                );
            }
            println!("revoked the code ({})", found.join(", "));
        }
    }
    Ok(())
}

fn tablets(config: &Config, action: TabletsAction) -> Result<()> {
    use facegate::tablets::book::{time_text, OsRandom};
    use facegate::tablets::{link, TabletStore};
    let store = TabletStore::new(config.tablets_path());
    let now = Utc::now();
    match action {
        TabletsAction::Add { name, host } => {
            let secret = store.update(|book| book.add(&name, now, &mut OsRandom))?;
            let host = host.unwrap_or_else(|| {
                link::lan_host(
                    config.http.listen,
                    facegate::host::routed_address(),
                    &facegate::host::interface_addresses(),
                )
            });
            let https = config.http.tls.enabled;
            let url = link::pairing_link(https, &host, config.http.listen.port(), &secret);
            let mut text = format!(
                "{}\nOpen this link on the tablet {name} (or scan the code) within 10 minutes; it works once:\n{url}\n",
                link::qr_text(&url)
            );
            if !https {
                text += "note: http.tls.enabled is false; a tablet's browser gives the camera only to https pages (see docs/deploy.md)\n";
            }
            print_all(&text)?;
        }
        TabletsAction::List => {
            let book = store.load()?;
            if book.tablets.is_empty() {
                println!("no tablets; pair one with facegate tablets add NAME");
            }
            println!(
                "{:<20} {:<44} {:<22} address",
                "name", "paired", "last seen"
            );
            for (name, tablet) in &book.tablets {
                println!(
                    "{name:<20} {:<44} {:<22} {}",
                    tablet.pairing_text(now),
                    time_text(tablet.last_seen),
                    tablet.last_address.as_deref().unwrap_or("-")
                );
            }
        }
        TabletsAction::Revoke { name } => {
            store.update(|book| book.revoke(&name))?;
            println!("revoked {name}: its token no longer works");
        }
    }
    Ok(())
}

/// Writes `text` to stdout; a reader that went away (`| head`) is no error.
fn print_all(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}
