//! Layer: driver. Where the peer's identity comes from: `--name`, else the name kept in the
//! state directory, else one derived from the machine id (plus the network namespace, so that
//! several routers on one machine, each in its own namespace, get distinct names), then kept.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rand::Rng;
use weft_mesh::{PeerName, ShortId};

/// The persistent identity of this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// 48-bit peer name.
    pub name: PeerName,
    /// 12-bit short id used in the VNI; kept across restarts.
    pub short_id: ShortId,
}

/// Load or create the identity under `state_dir`. An explicit `name` wins over a stored one;
/// a stored short id is kept only when the stored name matches.
pub fn load(state_dir: &Path, name: Option<PeerName>) -> io::Result<Identity> {
    fs::create_dir_all(state_dir)?;
    let name_file = state_dir.join("peer-name");
    let short_file = state_dir.join("short-id");
    let stored: Option<PeerName> = fs::read_to_string(&name_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let name = match (name, stored) {
        (Some(n), _) => n,
        (None, Some(n)) => n,
        (None, None) => derive_name(),
    };
    let stored_short: Option<ShortId> = if stored == Some(name) {
        fs::read_to_string(&short_file)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
            .and_then(ShortId::new)
    } else {
        None
    };
    let short_id = stored_short.unwrap_or_else(|| {
        // 12 bits: the mask keeps the value in range.
        ShortId::new(rand::rng().random::<u16>() & 0x0fff).expect("masked to 12 bits")
    });
    write_atomic(&name_file, format!("{name}\n").as_bytes())?;
    write_atomic(&short_file, format!("{}\n", short_id.get()).as_bytes())?;
    Ok(Identity { name, short_id })
}

fn derive_name() -> PeerName {
    let machine_id = fs::read("/etc/machine-id")
        .or_else(|_| fs::read("/var/lib/dbus/machine-id"))
        .unwrap_or_default();
    let mut product = fs::read("/sys/class/dmi/id/product_uuid")
        .or_else(|_| fs::read("/sys/hypervisor/uuid"))
        .unwrap_or_default();
    // The namespace's inode is fixed for the initial namespace, so a host's name is stable, and
    // differs between namespaces, so test hosts on one machine do not collide.
    if let Ok(meta) = fs::metadata("/proc/self/ns/net") {
        product.extend_from_slice(&meta.ino().to_be_bytes());
    }
    if machine_id.is_empty() && product.is_empty() {
        let mut random = [0u8; 16];
        rand::rng().fill(&mut random);
        return PeerName::derive(&random, &[]);
    }
    PeerName::derive(&machine_id, &product)
}

/// Write a file so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let f = fs::File::create(&tmp)?;
        io::Write::write_all(&mut &f, data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
