//! Shell completions and the man page, generated from the clap definition in [`super::cli`]
//! so that they never drift from the parser. Writes roff or shell code; talks to no bus.

use std::io::{self, Write};

use clap::{Arg, CommandFactory};
use clap_complete::Shell;
use roff::{Roff, bold, italic, roman};

use super::cli::{Cli, EXIT_STATUS_HELP};

/// Writes the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "tandemctl", out);
    out.flush()
}

/// Writes the man page `tandemctl(1)`: clap_mangen's title, synopsis, description and
/// global options, then every command with its arguments (one page, not one per
/// command), the exit statuses, the environment and examples.
pub fn man(out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let page = clap_mangen::Man::new(cmd.clone());
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;

    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_command(&mut roff, sub);
    }
    render_epilogue(&mut roff);
    roff.to_writer(out)?;
    out.flush()
}

/// One command: its synopsis, what it does, then each of its arguments and options.
fn render_command(roff: &mut Roff, sub: &clap::Command) {
    roff.control("TP", []);
    let mut synopsis = vec![bold(format!("tandemctl {}", sub.get_name()))];
    let options: Vec<&Arg> = sub.get_arguments().filter(|a| shown_option(a)).collect();
    if !options.is_empty() {
        synopsis.push(roman(" [OPTIONS]"));
    }
    for arg in sub.get_positionals() {
        synopsis.push(roman(" "));
        synopsis.push(italic(positional_name(arg)));
    }
    roff.text(synopsis);
    let mut about = sub
        .get_long_about()
        .or(sub.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let aliases: Vec<&str> = sub.get_visible_aliases().collect();
    if !aliases.is_empty() {
        about.push_str(&format!(" (alias: {})", aliases.join(", ")));
    }
    roff.text([roman(about)]);
    if let Some(after) = sub.get_after_help() {
        roff.control("IP", []);
        roff.text([roman(after.to_string())]);
    }
    let args: Vec<&Arg> = sub
        .get_positionals()
        .chain(options.iter().copied())
        .collect();
    if !args.is_empty() {
        roff.control("RS", []);
        for arg in args {
            roff.control("TP", []);
            roff.text(arg_header(arg));
            if let Some(help) = arg.get_help() {
                roff.text([roman(help.to_string())]);
            }
        }
        roff.control("RE", []);
    }
}

/// The sections after the commands: exit statuses, environment, examples, see also.
fn render_epilogue(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    for line in EXIT_STATUS_HELP.lines().skip(1) {
        let line = line.trim();
        if let Some((code, meaning)) = line.split_once(' ') {
            roff.control("TP", []);
            roff.text([bold(code)]);
            roff.text([roman(meaning.trim())]);
        }
    }

    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", []);
    roff.text([bold("DBUS_SESSION_BUS_ADDRESS")]);
    roff.text([roman(
        "The session bus where tandemd serves org.tandem.Messages1 \
         (default: $XDG_RUNTIME_DIR/bus).",
    )]);
    roff.control("TP", []);
    roff.text([bold("TZ")]);
    roff.text([roman("The time zone of the times in tables.")]);

    roff.control("SH", ["EXAMPLES"]);
    roff.control("nf", []);
    for line in [
        "tandemctl send +15551234567 'on my way'",
        "echo 'dinner at 8?' | tandemctl send --wait +15551234567 -",
        "tandemctl ls",
        "tandemctl messages +15551234567 --limit 20",
        "tandemctl --json search dinner",
        "tandemctl --json monitor | while read -r event; do ...; done",
    ] {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);

    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "tandemd(1), busctl(1); the D-Bus interface org.tandem.Messages1 \
         (share/dbus-1/interfaces/org.tandem.Messages1.xml).",
    )]);
}

fn shown_option(arg: &Arg) -> bool {
    !arg.is_positional() && !arg.is_hide_set() && !arg.is_global_set() && arg.get_id() != "help"
}

/// The first value name clap has for `arg`, or its id in capitals.
fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map_or_else(
            || arg.get_id().to_string().to_uppercase(),
            |n| n.to_string(),
        )
}

fn positional_name(arg: &Arg) -> String {
    let name = value_name(arg);
    let many = arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    let name = if many { format!("{name}...") } else { name };
    if arg.is_required_set() {
        name
    } else {
        format!("[{name}]")
    }
}

fn arg_header(arg: &Arg) -> Vec<roff::Inline> {
    if arg.is_positional() {
        return vec![italic(positional_name(arg))];
    }
    let mut header = Vec::new();
    if let Some(short) = arg.get_short() {
        header.push(bold(format!("-{short}")));
        header.push(roman(", "));
    }
    if let Some(long) = arg.get_long() {
        header.push(bold(format!("--{long}")));
    }
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    if takes_value {
        let value = value_name(arg);
        header.push(roman(" "));
        header.push(italic(value));
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() {
            header.push(roman(format!(" [default: {}]", defaults.join(","))));
        }
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned())
            .collect();
        if !possible.is_empty() {
            header.push(roman(format!(" [{}]", possible.join("|"))));
        }
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_lists_every_command_and_exit_status() {
        let mut out = Vec::new();
        man(&mut out).expect("render");
        let page = String::from_utf8(out).expect("utf-8");
        assert!(page.contains(".TH tandemctl 1"), "{page}");
        // roff escapes every '-' as "\-".
        for command in ["send", "conversations", "watch-contacts", "monitor", "man"] {
            let needle = format!("tandemctl {}", command.replace('-', "\\-"));
            assert!(page.contains(&needle), "{needle} missing");
        }
        assert!(page.contains("\\-\\-delivery\\-report"));
        assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
        assert!(page.contains("timed out"));
    }
}
