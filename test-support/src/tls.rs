//! Throw-away certificate authorities for servers with TLS, made with
//! `openssl`: one that signs the server's certificate, and an unrelated one,
//! to show that a wrong root is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process;

/// The files [`Certificates::make`] writes into its directory.
#[derive(Debug, Clone)]
pub struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    /// Makes, in `dir`: `ca.crt` (the authority that signs the server's
    /// certificate), `other-ca.crt` (one that signs nothing here), and
    /// `server.crt` / `server.key` for the subject alternative names `san`
    /// (e.g. `DNS:localhost`), the key readable by its owner alone, as
    /// PostgreSQL requires.
    pub fn make(dir: &Path, san: &str) -> Result<Self> {
        if process::find_on_path("openssl").is_none() {
            bail!(
                "`openssl` is not on PATH; throw-away servers with TLS need it for their \
                 certificates. Install it with `apt-get install openssl`."
            );
        }
        let openssl = |args: &[&str]| -> Result<()> {
            process::output(Command::new("openssl").args(args).current_dir(dir))
                .map(drop)
                .context("openssl failed")
        };
        for (name, subject) in [
            ("ca", "/CN=onceflight test CA"),
            ("other-ca", "/CN=an unrelated CA"),
        ] {
            let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
            openssl(&[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &crt,
                "-days", "3", "-subj", subject,
            ])?;
        }
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ])?;
        std::fs::write(dir.join("san.cnf"), format!("subjectAltName={san}\n"))
            .context("could not write san.cnf")?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3",
            "-extfile",
            "san.cnf",
        ])?;
        process::output(Command::new("chmod").arg("600").arg(dir.join("server.key")))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The PEM file of the authority that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The PEM file of an authority that signed nothing here.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    /// The server's certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    /// The server's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
}
