//! A failed command's message as `kiln` prints it; kilnd sends the same text to its clients.

use crate::Error;

/// The lines `kiln` prints on stderr for `e` (no final newline): a failed step as BuildKit's
/// `ERROR: failed to solve:` with its Dockerfile lines, a Dockerfile error rendered with its
/// snippet, anything else as `error:` and its causes.
pub fn render_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = match e.downcast_ref::<Error>() {
        Some(Error::Solve { message, location }) => {
            let mut out = format!("ERROR: failed to solve: {message}");
            if let Some(loc) = location {
                out.push('\n');
                out.push_str(loc);
            }
            return out;
        }
        Some(Error::Frontend(f)) => f.to_string(),
        _ => format!("error: {e}"),
    };
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!("\n  caused by: {c}"));
        cause = c.source();
    }
    out
}
