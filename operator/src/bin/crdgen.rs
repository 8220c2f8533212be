//! Writes the ChatTenant CRD to `crds/` and to the Helm chart, or checks that
//! the committed copies match the Rust types.
//!
//! ```text
//! crdgen            print the CRD YAML
//! crdgen --write    write crds/chattenants.chorus.dev.yaml and the chart copy
//! crdgen --check    exit 1 when either committed copy differs (CI)
//! ```

use std::{path::PathBuf, process::ExitCode};

const TARGETS: [&str; 2] = [
    "crds/chattenants.chorus.dev.yaml",
    "charts/chorus-operator/crds/chattenants.chorus.dev.yaml",
];

fn main() -> ExitCode {
    let yaml = match chorus_operator::crd::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: cannot render the CRD: {e}");
            return ExitCode::FAILURE;
        }
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "" => {
            use std::io::Write;
            // A CLI that prints its product on stdout, not a service log.
            match std::io::stdout().write_all(yaml.as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("crdgen: cannot write to stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "--write" => {
            for target in TARGETS {
                let path = root.join(target);
                let written = path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(&path, &yaml));
                if let Err(e) = written {
                    eprintln!("crdgen: cannot write {target}: {e}");
                    return ExitCode::FAILURE;
                }
                eprintln!("crdgen: wrote {target}");
            }
            ExitCode::SUCCESS
        }
        "--check" => {
            let mut ok = true;
            for target in TARGETS {
                let current = std::fs::read_to_string(root.join(target)).unwrap_or_default();
                if current != yaml {
                    eprintln!(
                        "crdgen: {target} is out of date with operator/src/crd; run `make crds` and commit the result"
                    );
                    ok = false;
                }
            }
            if ok {
                eprintln!("crdgen: generated CRDs are up to date");
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        other => {
            eprintln!("crdgen: unknown argument {other:?}; use --write or --check");
            ExitCode::FAILURE
        }
    }
}
