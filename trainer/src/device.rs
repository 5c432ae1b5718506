//! Where training runs. CUDA is compiled in only with the `cuda` feature (burn 0.21's CUDA
//! backend, which loads libcuda and NVRTC at run time). cudarc panics and cubecl unwraps when
//! those libraries are missing, so [`pick`] first opens them itself, calls `cuInit` and counts
//! devices, and falls back to CPU with the reason when anything is missing.

use serde::{Deserialize, Serialize};

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// CUDA when built in and usable, else CPU.
    #[default]
    Auto,
    Cpu,
    /// CUDA or an error.
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("device must be auto, cpu or cuda, given {other:?}")),
        }
    }
}

/// A usable device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

/// The device training runs on, and why when it is not what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picked {
    pub kind: Kind,
    /// `cpu` or `cuda:<index>`.
    pub name: String,
    pub note: Option<String>,
}

impl Picked {
    pub fn cpu(note: Option<String>) -> Self {
        Self { kind: Kind::Cpu, name: "cpu".into(), note }
    }
}

/// Picks the device for `choice`; `Cuda` without a usable GPU is an error, `Auto` falls back.
pub fn pick(choice: DeviceChoice) -> Result<Picked, String> {
    if choice == DeviceChoice::Cpu {
        return Ok(Picked::cpu(None));
    }
    match cuda() {
        Ok(picked) => Ok(picked),
        Err(why) if choice == DeviceChoice::Auto => Ok(Picked::cpu(Some(format!("training on CPU: {why}")))),
        Err(why) => Err(format!("device = cuda, but {why}")),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Picked, String> {
    Err("this trainer was built without the `cuda` feature".into())
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Picked, String> {
    let count = probe::devices()?;
    Ok(Picked { kind: Kind::Cuda(0), name: "cuda:0".into(), note: Some(format!("{count} CUDA device(s) found")) })
}

#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
mod probe {
    //! Opens the driver and NVRTC the way cudarc will, without its panics.

    use libloading::{Library, Symbol};

    const DRIVER: &[&str] = &["libcuda.so.1", "libcuda.so"];
    const NVRTC: &[&str] = &["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"];

    fn open(names: &[&str]) -> Result<Library, String> {
        for name in names {
            // SAFETY: loading a shared library runs its initialisers; the CUDA driver and NVRTC
            // are the libraries cudarc itself loads next, so this adds no new code to the process.
            if let Ok(lib) = unsafe { Library::new(name) } {
                return Ok(lib);
            }
        }
        Err(format!("none of {names:?} could be loaded (no NVIDIA driver or CUDA runtime on this machine)"))
    }

    /// Number of CUDA devices, after `cuInit` succeeded and NVRTC was found.
    pub fn devices() -> Result<i32, String> {
        let driver = open(DRIVER)?;
        // SAFETY: the signatures are the CUDA driver API's: CUresult cuInit(unsigned int) and
        // CUresult cuDeviceGetCount(int*); CUresult is an int-sized enum where 0 is success.
        let count = unsafe {
            let init: Symbol<unsafe extern "C" fn(u32) -> i32> =
                driver.get(b"cuInit\0").map_err(|e| format!("libcuda has no cuInit: {e}"))?;
            let code = init(0);
            if code != 0 {
                return Err(format!("cuInit failed with CUDA error {code}"));
            }
            let get_count: Symbol<unsafe extern "C" fn(*mut i32) -> i32> =
                driver.get(b"cuDeviceGetCount\0").map_err(|e| format!("libcuda has no cuDeviceGetCount: {e}"))?;
            let mut count = 0i32;
            let code = get_count(&mut count);
            if code != 0 {
                return Err(format!("cuDeviceGetCount failed with CUDA error {code}"));
            }
            count
        };
        if count < 1 {
            return Err("the NVIDIA driver reports no CUDA device".into());
        }
        open(NVRTC).map_err(|e| format!("NVRTC (kernel compiler) missing: {e}"))?;
        Ok(count)
    }
}
