//! The `chat-runtime` binary.

fn main() -> std::process::ExitCode {
    eprintln!("chat-runtime: the server is not implemented yet");
    std::process::ExitCode::FAILURE
}
