//! Reading a tensor's f32 data in place on the CPU, for the kernels that bypass candle's ops
//! (the fused attention softmax here; the trainer's fused head and in-place AdamW).

use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor};

/// The f32 data `layout` covers, when the storage is f32 and the layout contiguous.
pub fn f32_data<'a>(storage: &'a CpuStorage, layout: &Layout) -> Option<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Some(&data[start..end]),
        _ => None,
    }
}

/// [`f32_data`], mutably.
pub fn f32_data_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout) -> Option<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Some(&mut data[start..end]),
        _ => None,
    }
}

/// Calls `f` on `t`'s row-major f32 data in place when `t` is a contiguous f32 CPU tensor; None
/// otherwise (the caller picks its fallback).
pub fn with_f32_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f32_data(cpu, layout).map(f),
        _ => None,
    }
}

/// Calls `f` with `t`'s row-major f32 data: in place when `t` is a contiguous f32 CPU tensor
/// (the conversions below are then shallow clones), else from a converted copy.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()?;
    Ok(with_f32_data(&t, f).expect("a contiguous f32 CPU tensor"))
}
