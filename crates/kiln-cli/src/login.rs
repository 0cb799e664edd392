//! `kiln login` and `kiln logout`, with docker's flags and messages.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::args::{Cli, LoginArgs, LogoutArgs};

pub async fn login(cli: &Cli, a: &LoginArgs) -> Result<ExitCode> {
    let server = kiln_engine::login_server(a.server.as_deref());
    let Some(username) = a.username.as_deref().filter(|u| !u.is_empty()) else {
        bail!("kiln login needs a username (-u); prompting is not supported yet");
    };
    let password = if a.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from stdin")?;
        // As docker: one trailing newline (from echo or a file) is not part of the password.
        text.strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text)
            .to_string()
    } else if let Some(p) = &a.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p.clone()
    } else if std::io::stdin().is_terminal() {
        bail!(
            "kiln login needs a password (-p or --password-stdin); prompting is not supported yet"
        );
    } else {
        bail!("kiln login needs a password: use -p or --password-stdin");
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let (_, config) = crate::env::root_and_config(cli.root.as_deref(), cli.config.as_deref())?;
    let saved = kiln_engine::login(&config, &server, username, &password).await?;
    eprintln!("credentials saved in {}", saved.display());
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

pub fn logout(a: &LogoutArgs) -> Result<ExitCode> {
    let server = kiln_engine::login_server(a.server.as_deref());
    if kiln_engine::logout(&server)? {
        println!("Removing login credentials for {server}");
    } else {
        println!("Not logged in to {server}");
    }
    Ok(ExitCode::SUCCESS)
}
