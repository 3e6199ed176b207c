//! Moving PCI devices to vfio-pci and back (`p2pdma vfio attach` / `detach`), through
//! sysfs: `driver_override`, `driver/unbind`, `/sys/bus/pci/drivers_probe`. The driver a
//! device had is remembered in a state file so `detach` gives it back.
//!
//! An NVMe controller is refused while any of its namespaces (or their partitions) is
//! mounted or held (`holders/`: device-mapper, md, ...): taking the controller away would
//! pull a block device from under its user.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use p2pdma::blockdev::BlockDevice;
use p2pdma::sysfs::SysfsRoot;
use p2pdma::Bdf;

use crate::vfio::driver_of;

/// Errors of attach and detach.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// No such device.
    #[error("no PCI device {bdf} ({path} missing): list devices with `p2pdma topo`")]
    NoDevice {
        /// The device.
        bdf: Bdf,
        /// The path looked for.
        path: PathBuf,
    },
    /// A namespace is in use.
    #[error(
        "refusing to attach {bdf}: its namespace {name} is {how}; unmount it / stop its user first"
    )]
    InUse {
        /// The controller.
        bdf: Bdf,
        /// The namespace or partition.
        name: String,
        /// Mounted where, or held by whom.
        how: String,
    },
    /// Bound to a driver p2pdma does not take devices from.
    #[error("refusing to attach {bdf}: it is bound to {driver}; p2pdma only takes devices from nvme or from no driver: if nothing uses it, unbind it first (echo {bdf} > /sys/bus/pci/drivers/{driver}/unbind)")]
    ForeignDriver {
        /// The device.
        bdf: Bdf,
        /// Its driver.
        driver: String,
    },
    /// A sysfs write failed.
    #[error("cannot write '{value}' to {path} (are you root?)")]
    Write {
        /// The file.
        path: PathBuf,
        /// What.
        value: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The device did not end up where it should.
    #[error("{bdf} is bound to {now} after {what}, not {want} (see the kernel log: dmesg)")]
    Unbound {
        /// The device.
        bdf: Bdf,
        /// What was done.
        what: &'static str,
        /// The driver it has.
        now: String,
        /// The driver it should have.
        want: String,
    },
    /// The state file could not be read or written.
    #[error("cannot {what} the state file {path}")]
    State {
        /// Read or write.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading a block device failed.
    #[error(transparent)]
    Blockdev(#[from] p2pdma::blockdev::BlockdevError),
}

/// Where attach remembers the previous driver: `$P2PDMA_STATE_DIR` or `/run/p2pdma`,
/// file `vfio-<bdf>`.
pub fn state_file(bdf: Bdf) -> PathBuf {
    let dir = std::env::var_os("P2PDMA_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/p2pdma"));
    dir.join(format!("vfio-{bdf}"))
}

/// The NVMe namespaces (block device names) of controller `bdf`:
/// `/sys/bus/pci/devices/<bdf>/nvme/nvme*/nvme*n*`.
pub fn namespaces(sysfs: &SysfsRoot, bdf: Bdf) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(ctrls) = fs::read_dir(sysfs.pci_device(bdf).join("nvme")) else {
        return out;
    };
    for ctrl in ctrls.flatten() {
        let cname = ctrl.file_name().to_string_lossy().into_owned();
        let Ok(entries) = fs::read_dir(ctrl.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&cname) && name[cname.len()..].starts_with('n') {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

fn write(path: &Path, value: &str) -> Result<(), BindError> {
    fs::write(path, value).map_err(|source| BindError::Write {
        path: path.to_owned(),
        value: value.trim().to_owned(),
        source,
    })
}

fn wait_driver(sysfs: &SysfsRoot, bdf: Bdf, want: Option<&str>) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = driver_of(sysfs, bdf);
        if now.as_deref() == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What attach did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attached {
    /// The device.
    pub bdf: String,
    /// The driver it had (None: no driver).
    pub previous_driver: Option<String>,
    /// Whether it was already on vfio-pci.
    pub already: bool,
}

/// Moves `bdf` to vfio-pci, refusing an NVMe controller whose namespaces are mounted or
/// held, and remembers its driver.
pub fn attach(sysfs: &SysfsRoot, bdf: Bdf) -> Result<Attached, BindError> {
    let dev = sysfs.pci_device(bdf);
    if !dev.exists() {
        return Err(BindError::NoDevice { bdf, path: dev });
    }
    let driver = driver_of(sysfs, bdf);
    if driver.as_deref() == Some("vfio-pci") {
        return Ok(Attached {
            bdf: bdf.to_string(),
            previous_driver: read_state(bdf)?,
            already: true,
        });
    }
    match driver.as_deref() {
        None | Some("nvme") => {}
        Some(other) => {
            return Err(BindError::ForeignDriver {
                bdf,
                driver: other.into(),
            })
        }
    }
    for ns in namespaces(sysfs, bdf) {
        let disk = BlockDevice::read(sysfs, &ns)?;
        if let Some(m) = disk.mounts()?.first() {
            return Err(BindError::InUse {
                bdf,
                name: ns,
                how: format!("mounted on {}", m.mount_point.display()),
            });
        }
        if let Some((part, holder)) = disk.all_holders().first() {
            return Err(BindError::InUse {
                bdf,
                name: part.clone(),
                how: format!("held by {holder}"),
            });
        }
    }
    let state = state_file(bdf);
    if let Some(dir) = state.parent() {
        fs::create_dir_all(dir).map_err(|source| BindError::State {
            what: "create the directory of",
            path: state.clone(),
            source,
        })?;
    }
    fs::write(&state, driver.clone().unwrap_or_default()).map_err(|source| BindError::State {
        what: "write",
        path: state.clone(),
        source,
    })?;
    write(&sysfs.pci_driver_override(bdf), "vfio-pci")?;
    if driver.is_some() {
        write(&sysfs.pci_driver_link(bdf).join("unbind"), &bdf.to_string())?;
    }
    write(&sysfs.pci_drivers_probe(), &bdf.to_string())?;
    let now = wait_driver(sysfs, bdf, Some("vfio-pci"));
    if now.as_deref() != Some("vfio-pci") {
        return Err(BindError::Unbound {
            bdf,
            what: "driver_override and drivers_probe",
            now: now.unwrap_or_else(|| "no driver".into()),
            want: "vfio-pci (is CONFIG_VFIO_PCI on and the IOMMU enabled?)".into(),
        });
    }
    Ok(Attached {
        bdf: bdf.to_string(),
        previous_driver: driver,
        already: false,
    })
}

fn read_state(bdf: Bdf) -> Result<Option<String>, BindError> {
    let path = state_file(bdf);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_owned()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BindError::State {
            what: "read",
            path,
            source,
        }),
    }
}

/// What detach did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Detached {
    /// The device.
    pub bdf: String,
    /// The driver it has now.
    pub driver: Option<String>,
}

/// Gives `bdf` back to the driver it had before attach (or lets the kernel pick one).
pub fn detach(sysfs: &SysfsRoot, bdf: Bdf) -> Result<Detached, BindError> {
    let dev = sysfs.pci_device(bdf);
    if !dev.exists() {
        return Err(BindError::NoDevice { bdf, path: dev });
    }
    let previous = read_state(bdf)?;
    write(&sysfs.pci_driver_override(bdf), "\n")?;
    if driver_of(sysfs, bdf).as_deref() == Some("vfio-pci") {
        write(&sysfs.pci_driver_link(bdf).join("unbind"), &bdf.to_string())?;
    }
    write(&sysfs.pci_drivers_probe(), &bdf.to_string())?;
    let now = wait_driver(sysfs, bdf, previous.as_deref());
    if previous.is_some() && now != previous {
        return Err(BindError::Unbound {
            bdf,
            what: "clearing driver_override and drivers_probe",
            now: now.unwrap_or_else(|| "no driver".into()),
            want: previous.unwrap_or_default(),
        });
    }
    let _ = fs::remove_file(state_file(bdf));
    Ok(Detached {
        bdf: bdf.to_string(),
        driver: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_found_under_the_controllers_nvme_directory() {
        let dir = tempfile::tempdir().unwrap();
        let bdf: Bdf = "0000:01:00.0".parse().unwrap();
        let sysfs = SysfsRoot::new(dir.path());
        let ctrl = sysfs.pci_device(bdf).join("nvme/nvme3");
        for name in ["nvme3n1", "nvme3n2", "device", "ng3n1"] {
            fs::create_dir_all(ctrl.join(name)).unwrap();
        }
        assert_eq!(namespaces(&sysfs, bdf), ["nvme3n1", "nvme3n2"]);
        let other: Bdf = "0000:02:00.0".parse().unwrap();
        assert!(namespaces(&sysfs, other).is_empty());
        let err = attach(&sysfs, other).unwrap_err();
        assert!(
            err.to_string().contains("no PCI device 0000:02:00.0"),
            "{err}"
        );
    }

    #[test]
    fn a_device_on_another_driver_is_refused_with_the_unbind_that_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let bdf: Bdf = "0000:03:00.0".parse().unwrap();
        let sysfs = SysfsRoot::new(dir.path());
        let drv = dir.path().join("bus/pci/drivers/p2pdma_ram");
        fs::create_dir_all(&drv).unwrap();
        fs::create_dir_all(sysfs.pci_device(bdf)).unwrap();
        std::os::unix::fs::symlink(&drv, sysfs.pci_driver_link(bdf)).unwrap();
        let err = attach(&sysfs, bdf).unwrap_err();
        assert!(matches!(err, BindError::ForeignDriver { .. }), "{err}");
        assert!(
            err.to_string().ends_with(
                "unbind it first (echo 0000:03:00.0 > /sys/bus/pci/drivers/p2pdma_ram/unbind)"
            ),
            "{err}"
        );
        assert!(
            !sysfs.pci_driver_override(bdf).exists(),
            "nothing written to the device"
        );
    }
}
