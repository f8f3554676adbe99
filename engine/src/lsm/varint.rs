//! LEB128 unsigned varints (7 bits per byte, low bits first), used inside
//! blocks and batches where most numbers are small.

/// Appends `v` as a varint.
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at `*pos`, advancing it; `None` if truncated or longer
/// than ten bytes.
#[inline]
pub fn get(buf: &[u8], pos: &mut usize) -> Option<u64> {
    // Most values in a block's columns (key lengths, value lengths) fit in
    // one byte: decoded inline, without the loop. Same result as the loop.
    let first = *buf.get(*pos)?;
    if first < 0x80 {
        *pos += 1;
        return Some(u64::from(first));
    }
    get_long(buf, pos)
}

/// [`get`] of a value of more than one byte (or a malformed one).
fn get_long(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7F).checked_shl(shift)?;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 40, u64::MAX] {
            let mut b = Vec::new();
            super::put(&mut b, v);
            let mut pos = 0;
            assert_eq!(super::get(&b, &mut pos), Some(v));
            assert_eq!(pos, b.len());
            let mut pos = 0;
            assert_eq!(super::get(&b[..b.len() - 1], &mut pos), None);
        }
    }

    /// The one-byte fast path answers what the general loop answers, and
    /// moves `pos` the same, on any bytes at any position (overlong and
    /// truncated varints included).
    #[test]
    fn the_fast_path_agrees_with_the_loop() {
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..50_000 {
            let len = rng.usize(0..14);
            // Mostly continuation bytes, so long and malformed varints come up.
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.u8(0..4) == 0 {
                        rng.u8(0..0x80)
                    } else {
                        rng.u8(0x80..=0xFF)
                    }
                })
                .collect();
            let start = rng.usize(0..=len);
            let (mut a, mut b) = (start, start);
            let fast = super::get(&buf, &mut a);
            let slow = super::get_long(&buf, &mut b);
            assert_eq!(fast, slow, "{buf:?} at {start}");
            if fast.is_some() {
                assert_eq!(a, b, "{buf:?} at {start}");
            }
        }
    }
}
