//! `tandem-mmsim`: runs the ModemManager simulator on a private (or test) bus until
//! SIGINT/SIGTERM. Prints `ready` on stdout once the names are owned, and nothing else;
//! logs go to stderr.
//!
//! On a laptop, with a private bus:
//! ```sh
//! dbus-daemon --session --fork --print-address > /tmp/mmsim-bus
//! export DBUS_SYSTEM_BUS_ADDRESS=$(cat /tmp/mmsim-bus)
//! tandem-mmsim --modem +15550001111 --modem +15550002222,nosimnumber &
//! mmcli -L
//! busctl --system call org.tandem.MMSim1 /org/tandem/MMSim1 org.tandem.MMSim1 \
//!   InjectSms sssa{sv} +15550001111 +4915112345678 "hello" 0
//! ```

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use tandem::mmsim::{self, ModemSpec, SimConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// A ModemManager 1.20 simulator with a simulated carrier.
///
/// Serves org.freedesktop.ModemManager1 and the control interface org.tandem.MMSim1 on
/// the given bus (never start it on the machine's real system bus).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// D-Bus address to serve on (default: $DBUS_SYSTEM_BUS_ADDRESS).
    #[arg(long, value_name = "ADDRESS")]
    bus: Option<String>,
    /// A modem to host: NUMBER[,nosimnumber][,state=N]; repeat for more.
    #[arg(long = "modem", value_name = "NUMBER[,nosimnumber]")]
    modems: Vec<ModemArg>,
    /// Delay between a delivery and its status report.
    #[arg(long, value_name = "N", default_value_t = 100)]
    report_delay_ms: u64,
    /// Delay between the parts of a multipart SMS.
    #[arg(long, value_name = "N", default_value_t = 20)]
    part_interval_ms: u64,
    /// The SMS centre's UTC offset in minutes, shown in SMS timestamps.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    utc_offset_minutes: i32,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Clone)]
struct ModemArg(ModemSpec);

impl FromStr for ModemArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut fields = s.split(',');
        let number = fields.next().unwrap_or_default().trim();
        if number.is_empty() {
            return Err("a modem needs a number".to_owned());
        }
        let mut spec = ModemSpec::new(number);
        for field in fields {
            match field.trim() {
                "nosimnumber" => spec.sim_own_number = false,
                f => match f.strip_prefix("state=").map(str::parse) {
                    Some(Ok(state)) => spec.state = state,
                    _ => return Err(format!("unknown modem flag {f:?}")),
                },
            }
        }
        Ok(ModemArg(spec))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tandem::logging::init(tandem::logging::verbosity(args.verbose));

    let address = match args
        .bus
        .or_else(|| std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok())
    {
        Some(address) => address,
        None => bail!("no bus: give --bus ADDRESS or set DBUS_SYSTEM_BUS_ADDRESS"),
    };
    let conn = zbus::connection::Builder::address(address.as_str())
        .build()
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let config = SimConfig {
        modems: args.modems.into_iter().map(|m| m.0).collect(),
        report_delay: Duration::from_millis(args.report_delay_ms),
        part_interval: Duration::from_millis(args.part_interval_ms),
        utc_offset_minutes: args.utc_offset_minutes,
        ..SimConfig::default()
    };
    let simulator = mmsim::serve(&conn, config)
        .await
        .context("cannot start the simulator")?;
    println!("ready");

    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT")?,
        _ = term.recv() => {}
    }
    info!("shutting down");
    simulator.shutdown().await;
    Ok(())
}
