//! Where models run: `cpu` (the default), or `cuda` / `cuda:N` on a binary built with the `cuda`
//! feature. Parsed from `--device` and `device = "…"` in configs; [`DeviceSpec::open`] gives
//! candle's device, or an error that says what is missing and what to do.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A device as users name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// The GPU of this ordinal, as CUDA numbers the visible ones (after `CUDA_VISIBLE_DEVICES`).
    Cuda(usize),
}

impl DeviceSpec {
    /// Whether this binary was built with CUDA support (the `cuda` feature).
    pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

    /// candle's device for this spec: opening a GPU creates its context (and fails, with what to
    /// check, when the binary has no CUDA or the GPU is not visible).
    pub fn open(&self) -> Result<Device> {
        match *self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(ordinal),
        }
    }

    pub fn is_cpu(&self) -> bool {
        *self == DeviceSpec::Cpu
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        let visible =
            std::env::var("CUDA_VISIBLE_DEVICES").map(|v| format!(" (CUDA_VISIBLE_DEVICES={v})")).unwrap_or_default();
        Error::Input(format!(
            "cannot open CUDA device {ordinal}{visible}: {e}\nHINT: `nvidia-smi` lists the GPUs this machine \
             sees and their driver; the driver's libcuda.so must be on the library path. `--device cpu` runs \
             without a GPU"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Err(Error::Input(format!(
        "--device cuda:{ordinal}: this distill was built without CUDA\nHINT: rebuild with \
         `cargo build --release --features cuda` (it needs the CUDA toolkit; docs/gpu.md says how), \
         or run on `--device cpu`"
    )))
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        let bad = || {
            Error::Input(format!(
                "unknown device `{s}`: expected `cpu`, `cuda` or `cuda:N` (N the GPU's number, from 0)"
            ))
        };
        match s.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse().map(DeviceSpec::Cuda).map_err(|_| bad())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A short name for a device, for messages: `cpu`, `cuda:0`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_names_users_write() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("expected `cpu`, `cuda` or `cuda:N`"), "{bad}: {e}");
        }
    }

    #[test]
    fn reads_from_a_config_value() {
        #[derive(Deserialize)]
        struct C {
            device: DeviceSpec,
        }
        let c: C = toml::from_str("device = \"cuda:1\"").unwrap();
        assert_eq!(c.device, DeviceSpec::Cuda(1));
        let e = toml::from_str::<C>("device = \"tpu\"").err().unwrap().to_string();
        assert!(e.contains("unknown device `tpu`"), "{e}");
    }

    #[test]
    fn cpu_opens_everywhere() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    }

    /// Without the feature, asking for a GPU says the binary lacks CUDA and how to get it.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("built without CUDA") && e.contains("--features cuda"), "{e}");
    }

    /// With the feature but no GPU (CI, this machine), opening one fails with what to check.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_without_a_gpu_says_what_to_check() {
        if let Err(e) = DeviceSpec::Cuda(0).open() {
            assert!(e.to_string().contains("nvidia-smi"), "{e}");
        }
    }
}
