#!/bin/sh
# Installs Tandem: binaries, the systemd user unit, the D-Bus activation file, the
# interface XML, the documented default configuration, and tandemctl's shell completions
# (bash, zsh, fish) and man page, which tandemctl generates from its own definition.
#
#   data/install.sh                          # build (release) and install under /usr/local
#   PREFIX=/usr DESTDIR=/tmp/pkg data/install.sh   # for packagers
#   NO_BUILD=1 BINDIR_SRC=target/debug ...   # install binaries built elsewhere
#   CTL_GEN=/path/to/host/tandemctl ...      # cross builds: a tandemctl that runs here
#
# Then, as the phone's user: systemctl --user enable --now tandemd
set -eu
cd "$(dirname "$0")/.."

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BINDIR=${BINDIR:-$PREFIX/bin}
DATADIR=${DATADIR:-$PREFIX/share}
SYSTEMD_USER_UNIT_DIR=${SYSTEMD_USER_UNIT_DIR:-$PREFIX/lib/systemd/user}
BINDIR_SRC=${BINDIR_SRC:-target/release}
MANDIR=${MANDIR:-$DATADIR/man}
CTL_GEN=${CTL_GEN:-$BINDIR_SRC/tandemctl}

if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --locked --bins
fi

install -d "$DESTDIR$BINDIR" "$DESTDIR$SYSTEMD_USER_UNIT_DIR" \
    "$DESTDIR$DATADIR/dbus-1/services" "$DESTDIR$DATADIR/dbus-1/interfaces" \
    "$DESTDIR$DATADIR/doc/tandem" "$DESTDIR$DATADIR/bash-completion/completions" \
    "$DESTDIR$DATADIR/zsh/site-functions" "$DESTDIR$DATADIR/fish/vendor_completions.d" \
    "$DESTDIR$MANDIR/man1"
for bin in tandemd tandem-mmsim tandemctl; do
    install -m 0755 "$BINDIR_SRC/$bin" "$DESTDIR$BINDIR/$bin"
done
sed "s|@bindir@|$BINDIR|g" systemd/tandemd.service > "$DESTDIR$SYSTEMD_USER_UNIT_DIR/tandemd.service"
chmod 0644 "$DESTDIR$SYSTEMD_USER_UNIT_DIR/tandemd.service"
sed "s|@bindir@|$BINDIR|g" dbus/org.tandem.Messages1.service > "$DESTDIR$DATADIR/dbus-1/services/org.tandem.Messages1.service"
chmod 0644 "$DESTDIR$DATADIR/dbus-1/services/org.tandem.Messages1.service"
install -m 0644 dbus/org.tandem.Messages1.xml "$DESTDIR$DATADIR/dbus-1/interfaces/org.tandem.Messages1.xml"
install -m 0644 data/config.toml "$DESTDIR$DATADIR/doc/tandem/config.toml"
"$CTL_GEN" completions bash > "$DESTDIR$DATADIR/bash-completion/completions/tandemctl"
"$CTL_GEN" completions zsh > "$DESTDIR$DATADIR/zsh/site-functions/_tandemctl"
"$CTL_GEN" completions fish > "$DESTDIR$DATADIR/fish/vendor_completions.d/tandemctl.fish"
"$CTL_GEN" man > "$DESTDIR$MANDIR/man1/tandemctl.1"
chmod 0644 "$DESTDIR$DATADIR/bash-completion/completions/tandemctl" \
    "$DESTDIR$DATADIR/zsh/site-functions/_tandemctl" \
    "$DESTDIR$DATADIR/fish/vendor_completions.d/tandemctl.fish" \
    "$DESTDIR$MANDIR/man1/tandemctl.1"
echo "installed into ${DESTDIR:-/}$PREFIX"
