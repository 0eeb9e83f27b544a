//! The static waiter (`proxy/waiter/main.rs`, built by `build.rs`) that joined containers run
//! as `/w/w` before their own entrypoint.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;

/// The waiter executable.
pub static BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/weft-wait"));

/// Writes the waiter as `dir/w` (mode 0755), replacing an older one atomically (a running
/// container may be executing it, so it is renamed over, never rewritten in place).
pub fn install(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("w");
    if std::fs::read(&path).is_ok_and(|old| old == BINARY) {
        return Ok(());
    }
    let tmp = dir.join(format!(".w.{}", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(BINARY)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path).with_context(|| format!("installing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiter_is_a_static_executable_that_waits_then_execs() {
        assert_eq!(&BINARY[..4], b"\x7fELF");
        let dir = std::env::temp_dir().join(format!("weft-waiter-test-{}", std::process::id()));
        install(&dir).unwrap();
        install(&dir).unwrap();
        let w = dir.join("w");
        // No program interpreter: it runs in images without a libc.
        let bytes = std::fs::read(&w).unwrap();
        assert!(!has_interpreter(&bytes), "the waiter is dynamically linked");
        // Without arguments it says so.
        let out = std::process::Command::new(&w).output().unwrap();
        assert_eq!(out.status.code(), Some(127));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no command"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Whether a 64-bit little-endian ELF file has a `PT_INTERP` program header.
    fn has_interpreter(elf: &[u8]) -> bool {
        let u16_at = |o: usize| usize::from(u16::from_le_bytes([elf[o], elf[o + 1]]));
        let phoff =
            usize::try_from(u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap())).unwrap();
        let (size, count) = (u16_at(0x36), u16_at(0x38));
        (0..count).any(|i| {
            let o = phoff + i * size;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
        })
    }
}
