//! What the whole-stack tests (console, contract) share.

/// A fresh folder under the current directory, by a relative path (Tansu's
/// `sqlite://` storage is relative to its working directory), removed on
/// drop.
pub struct RelativeDir(std::path::PathBuf);

impl RelativeDir {
    /// Creates `.tmp-<name>-<unique>`.
    pub fn new(name: &str) -> std::io::Result<Self> {
        let path = std::path::PathBuf::from(format!(".tmp-{name}-{}", triggers_core::ids::RequestId::new()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    /// The folder.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for RelativeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
