//! `tandem-messages`: Tandem's messenger app (see the library, `tandem_messages`).

fn main() -> gtk::glib::ExitCode {
    tandem_messages::run()
}
