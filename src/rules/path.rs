//! Path decoding: the security boundary. The raw path is percent-decoded exactly once, and a
//! path that could mean two things (to us and to the EHR) is refused with a
//! [`PathRejection`] instead of guessed at.

use std::collections::HashSet;

use super::error::PathRejection;

/// Longest request path (before the `?`) accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 8192;

/// RFC 3986 `pchar` minus `%` and `;` (handled separately).
pub(super) fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

pub(super) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode the raw path once, refusing anything ambiguous (see the module invariants).
pub(super) fn decode_path(raw: &str) -> Result<String, PathRejection> {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathRejection::NotOriginForm);
    }
    if b.len() > MAX_PATH_BYTES {
        return Err(PathRejection::TooLong {
            len: b.len(),
            limit: MAX_PATH_BYTES,
        });
    }
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    out.push(b'/');
    let mut i = 1;
    let mut seg_raw = 1; // raw offset of the current segment
    let mut seg_out = 1; // decoded offset of the current segment
    while i < b.len() {
        let c = b[i];
        match c {
            b'/' => {
                check_segment(&out[seg_out..], seg_raw, false)?;
                out.push(b'/');
                i += 1;
                seg_raw = i;
                seg_out = out.len();
            }
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex_val),
                    b.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(PathRejection::InvalidPercentEncoding { at: i });
                };
                let v = h * 16 + l;
                match v {
                    0 => return Err(PathRejection::Nul { at: i }),
                    b'/' | b'\\' => return Err(PathRejection::EncodedSlash { at: i }),
                    b'%' => return Err(PathRejection::DoubleEncoding { at: i }),
                    b';' => return Err(PathRejection::MatrixParam { at: i }),
                    0x01..=0x1f | 0x7f => return Err(PathRejection::ControlCharacter { at: i }),
                    _ => out.push(v),
                }
                i += 3;
            }
            0 => return Err(PathRejection::Nul { at: i }),
            0x01..=0x1f | 0x7f => return Err(PathRejection::ControlCharacter { at: i }),
            b'\\' => return Err(PathRejection::Backslash { at: i }),
            b';' => return Err(PathRejection::MatrixParam { at: i }),
            _ if is_path_char(c) => {
                out.push(c);
                i += 1;
            }
            _ => return Err(PathRejection::InvalidCharacter { at: i }),
        }
    }
    check_segment(&out[seg_out..], seg_raw, true)?;
    // Every segment was checked to be UTF-8 and `/` only joins them.
    String::from_utf8(out).map_err(|_| PathRejection::InvalidUtf8 { at: 0 })
}

pub(super) fn check_segment(seg: &[u8], at: usize, last: bool) -> Result<(), PathRejection> {
    match seg {
        b"" if !last => Err(PathRejection::EmptySegment { at }),
        b"." | b".." => Err(PathRejection::DotSegment { at }),
        _ if seg.is_ascii() => Ok(()),
        _ => {
            let s = std::str::from_utf8(seg).map_err(|_| PathRejection::InvalidUtf8 { at })?;
            if s.chars().any(char::is_control) {
                return Err(PathRejection::ControlCharacter { at });
            }
            Ok(())
        }
    }
}

/// Byte ranges of the decoded path's segments, without a trailing empty segment.
pub(super) fn segment_bounds(path: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(8);
    let mut start = 1;
    for (i, b) in path.bytes().enumerate().skip(1) {
        if b == b'/' {
            out.push((start, i));
            start = i + 1;
        }
    }
    if start < path.len() {
        out.push((start, path.len()));
    }
    out
}

pub(super) fn strip_base<'s>(
    path: &str,
    segs: &'s [(usize, usize)],
    base: &[String],
) -> Option<&'s [(usize, usize)]> {
    if segs.len() < base.len() {
        return None;
    }
    for (b, &(s, e)) in base.iter().zip(segs) {
        if &path[s..e] != b.as_str() {
            return None;
        }
    }
    Some(&segs[base.len()..])
}

pub(super) fn validate_base_paths(bases: &[String]) -> Result<(), String> {
    if bases.is_empty() {
        return Err("at least one base path is needed (\"/\" for the root)".into());
    }
    let mut seen = HashSet::new();
    for b in bases {
        if b != "/" {
            if !b.starts_with('/') || b.ends_with('/') {
                return Err(format!(
                    "base path {b:?} must start with '/' and not end with one"
                ));
            }
            for seg in b[1..].split('/') {
                if seg.is_empty() || seg == "." || seg == ".." || !seg.bytes().all(is_path_char) {
                    return Err(format!(
                        "base path {b:?} has an empty, dot or non-literal segment (no '%', ';')"
                    ));
                }
            }
        }
        if !seen.insert(b) {
            return Err(format!("base path {b:?} is listed twice"));
        }
    }
    Ok(())
}

pub(super) fn base_segments(b: &str) -> Vec<String> {
    if b == "/" {
        Vec::new()
    } else {
        b[1..].split('/').map(str::to_string).collect()
    }
}
