#!/bin/sh
# Installs Tandem: binaries, the systemd user unit, the D-Bus activation file, the
# interface XML and the documented default configuration.
#
#   data/install.sh                          # build (release) and install under /usr/local
#   PREFIX=/usr DESTDIR=/tmp/pkg data/install.sh   # for packagers
#   NO_BUILD=1 BINDIR_SRC=target/debug ...   # install binaries built elsewhere
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

if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --locked --bins
fi

install -d "$DESTDIR$BINDIR" "$DESTDIR$SYSTEMD_USER_UNIT_DIR" \
    "$DESTDIR$DATADIR/dbus-1/services" "$DESTDIR$DATADIR/dbus-1/interfaces" \
    "$DESTDIR$DATADIR/doc/tandem"
for bin in tandemd tandem-mmsim; do
    install -m 0755 "$BINDIR_SRC/$bin" "$DESTDIR$BINDIR/$bin"
done
sed "s|@bindir@|$BINDIR|g" systemd/tandemd.service > "$DESTDIR$SYSTEMD_USER_UNIT_DIR/tandemd.service"
chmod 0644 "$DESTDIR$SYSTEMD_USER_UNIT_DIR/tandemd.service"
sed "s|@bindir@|$BINDIR|g" dbus/org.tandem.Messages1.service > "$DESTDIR$DATADIR/dbus-1/services/org.tandem.Messages1.service"
chmod 0644 "$DESTDIR$DATADIR/dbus-1/services/org.tandem.Messages1.service"
install -m 0644 dbus/org.tandem.Messages1.xml "$DESTDIR$DATADIR/dbus-1/interfaces/org.tandem.Messages1.xml"
install -m 0644 data/config.toml "$DESTDIR$DATADIR/doc/tandem/config.toml"
echo "installed into ${DESTDIR:-/}$PREFIX"
