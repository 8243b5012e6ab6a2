//! Test support shared by this crate's Docker tests and the end-to-end tests: the
//! locally built images shoal's tests run (no registry is reachable), made by
//! `tests/images/build-test-images.sh` — a static busybox imported as
//! `shoal-test/busybox:latest`, and `shoal-test/busybox:v2` (a different image,
//! for update tests). The script is the one source of truth; CI calls it directly.

use std::path::PathBuf;

use bollard::Docker;

/// A tiny image with `sh`, `sleep`, `httpd`, `nc`, `wget`... (busybox applets).
pub const TEST_IMAGE: &str = "shoal-test/busybox:latest";
/// The same with a `/VERSION` file reading `v2`: another image id.
pub const TEST_IMAGE_V2: &str = "shoal-test/busybox:v2";

/// The script that builds the test images.
pub fn build_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/images/build-test-images.sh")
}

async fn present(docker: &Docker, image: &str) -> bool {
    docker.inspect_image(image).await.is_ok()
}

/// Returns [`TEST_IMAGE`], building both test images first when one is missing.
pub async fn ensure_test_image(docker: &Docker) -> Result<String, String> {
    // One build at a time in this process; the script itself locks across processes.
    static BUILD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = BUILD.lock().await;
    if present(docker, TEST_IMAGE).await && present(docker, TEST_IMAGE_V2).await {
        return Ok(TEST_IMAGE.to_string());
    }
    let script = build_script();
    let output = tokio::process::Command::new("sh")
        .arg(&script)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    if !present(docker, TEST_IMAGE).await {
        return Err(format!(
            "{} ran but {TEST_IMAGE} is still missing",
            script.display()
        ));
    }
    Ok(TEST_IMAGE.to_string())
}
