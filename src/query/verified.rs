//! A Parquet file read through its seal: every byte the Parquet reader asks for is first
//! fetched a whole unit at a time and checked against the unit's SHA-256 in the seal, so the
//! footer, the statistics, the bloom filters and the pages a query decodes are the ones the
//! gateway signed. A unit is fetched once; a read that would touch a unit whose hash does not
//! match fails, naming the unit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};
use sha2::{Digest, Sha256};

use super::source::{Fetcher, Place};
use crate::columnar::Seal;

/// A Parquet file read unit by unit, each checked against the seal (or, unverified, not).
#[derive(Clone)]
pub struct VerifiedFile {
    inner: Arc<Inner>,
}

struct Inner {
    place: Place,
    seal: Seal,
    fetcher: Fetcher,
    /// Check each unit's hash (false only under `--no-verify`).
    check: bool,
    units: Mutex<HashMap<usize, Bytes>>,
    /// Bytes fetched so far.
    fetched: std::sync::atomic::AtomicU64,
}

impl VerifiedFile {
    /// The file at `place`, as `seal` states it.
    pub fn new(place: Place, seal: Seal, fetcher: Fetcher, check: bool) -> Self {
        VerifiedFile {
            inner: Arc::new(Inner {
                place,
                seal,
                fetcher,
                check,
                units: Mutex::new(HashMap::new()),
                fetched: Default::default(),
            }),
        }
    }

    /// The seal the file is read through.
    pub fn seal(&self) -> &Seal {
        &self.inner.seal
    }

    /// Bytes fetched so far (each unit once).
    pub fn fetched_bytes(&self) -> u64 {
        self.inner
            .fetched
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Unit `index`, fetched and checked on first use.
    fn unit(&self, index: usize) -> Result<Bytes, ParquetError> {
        let inner = &self.inner;
        if let Some(bytes) = inner
            .units
            .lock()
            .map_err(|_| ParquetError::General("unit cache poisoned".into()))?
            .get(&index)
        {
            return Ok(bytes.clone());
        }
        let (start, hash) = inner.seal.units[index];
        let end = inner
            .seal
            .units
            .get(index + 1)
            .map_or(inner.seal.file_size, |u| u.0);
        let bytes = inner
            .fetcher
            .get_range(&inner.place, start, end - start)
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        if bytes.len() as u64 != end - start
            || (inner.check && <[u8; 32]>::from(Sha256::digest(&bytes)) != hash)
        {
            return Err(ParquetError::General(format!(
                "{}: bytes {start}..{end} do not match the hash its seal states (the file was changed)",
                inner.place.label()
            )));
        }
        inner
            .fetched
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let bytes = Bytes::from(bytes);
        inner
            .units
            .lock()
            .map_err(|_| ParquetError::General("unit cache poisoned".into()))?
            .insert(index, bytes.clone());
        Ok(bytes)
    }
}

impl Length for VerifiedFile {
    fn len(&self) -> u64 {
        self.inner.seal.file_size
    }
}

impl ChunkReader for VerifiedFile {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> Result<Self::T, ParquetError> {
        // A reader from `start` to the end of its unit (page headers and pages are read this
        // way; none crosses a unit's end, as units start at every page).
        let (index, unit_start, _) = self
            .inner
            .seal
            .unit_at(start)
            .ok_or_else(|| ParquetError::EOF(format!("offset {start} is past the file")))?;
        let unit = self.unit(index)?;
        use bytes::Buf;
        Ok(unit.slice((start - unit_start) as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        let end = start + length as u64;
        let (index, unit_start, unit_end) = self
            .inner
            .seal
            .unit_at(start)
            .ok_or_else(|| ParquetError::EOF(format!("offset {start} is past the file")))?;
        if end <= unit_end {
            let unit = self.unit(index)?;
            return Ok(unit.slice((start - unit_start) as usize..(end - unit_start) as usize));
        }
        // Spanning units (the page index region read whole, a footer hint): join them.
        let mut out = Vec::with_capacity(length);
        let mut at = start;
        while at < end {
            let (index, unit_start, unit_end) = self
                .inner
                .seal
                .unit_at(at)
                .ok_or_else(|| ParquetError::EOF(format!("offset {at} is past the file")))?;
            let unit = self.unit(index)?;
            let to = unit_end.min(end);
            out.extend_from_slice(&unit[(at - unit_start) as usize..(to - unit_start) as usize]);
            at = to;
        }
        Ok(Bytes::from(out))
    }
}
