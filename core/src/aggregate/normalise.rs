//! Dimension normalisation exactly as `warehouse.md` defines it.

/// `os` value for an absent or empty OS.
pub const OS_UNKNOWN: &str = "unknown";
/// `os` value that over-cap OS strings fold into.
pub const OS_OTHER: &str = "other";
/// Longest normalised OS, in bytes.
pub const OS_MAX_LEN: usize = 32;

/// Upper-cased ISO alpha-2 code, or `--` when absent or not two ASCII letters.
#[inline]
pub fn normalise_country(country: Option<&str>) -> [u8; 2] {
    match country.map(str::as_bytes) {
        Some(&[a, b]) if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            [a.to_ascii_uppercase(), b.to_ascii_uppercase()]
        }
        _ => *b"--",
    }
}

/// ASCII letters lower-cased and the string cut to at most 32 bytes at a
/// character boundary, written into `buf`; `None` means `unknown` (absent or
/// empty). Returns the normalised slice of `buf`.
#[inline]
pub fn normalise_os<'b>(os: Option<&str>, buf: &'b mut [u8; OS_MAX_LEN]) -> Option<&'b str> {
    let os = os.filter(|s| !s.is_empty())?;
    let mut end = os.len().min(OS_MAX_LEN);
    while !os.is_char_boundary(end) {
        end -= 1;
    }
    let cut = &os.as_bytes()[..end];
    for (dst, &src) in buf.iter_mut().zip(cut) {
        *dst = src.to_ascii_lowercase();
    }
    // SAFETY: `cut` is a prefix of a `str` ending at a char boundary, so it is
    // valid UTF-8, and changing the case of ASCII bytes (which never occur
    // inside a multi-byte sequence) keeps it valid. (This runs per event:
    // validating again would cost more than the lower-casing.)
    let out = unsafe { std::str::from_utf8_unchecked(&buf[..end]) };
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}
