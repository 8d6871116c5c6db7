//! The Confluent wire format: byte 0 (the magic byte), the schema id as 4 bytes
//! big-endian, then the body. A Protobuf body starts with its message indexes (the path
//! of the message type among the schema's messages, nested ones included): a count, then
//! the indexes, each a zig-zag varint; the count 0 alone stands for `[0]`, the first
//! message.

use crate::event::{RejectClass, Rejection};

/// The magic byte of the wire format.
pub const MAGIC: u8 = 0;

/// A message split into its schema id and its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    pub id: u32,
    pub body: &'a [u8],
}

impl<'a> Framed<'a> {
    /// Splits `message`; a message too short or without the magic byte is refused.
    pub fn parse(message: &'a [u8]) -> Result<Self, Rejection> {
        match message {
            [MAGIC, a, b, c, d, body @ ..] => Ok(Self { id: u32::from_be_bytes([*a, *b, *c, *d]), body }),
            [MAGIC, ..] => Err(Rejection::new(
                RejectClass::NotWireFormat,
                format!("the message is {} bytes, too short for the wire format's 5-byte header", message.len()),
            )),
            _ => Err(Rejection::new(
                RejectClass::NotWireFormat,
                "the message does not start with the wire format's magic byte 0 (was it written without a \
                 schema registry?)",
            )),
        }
    }
}

/// `body` in the wire format of schema `id`.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads a Protobuf body's message indexes; returns them and the message's bytes.
pub fn message_indexes(body: &[u8]) -> Result<(Vec<i32>, &[u8]), String> {
    let mut at = body;
    let count = zigzag(&mut at)?;
    if count == 0 {
        return Ok((vec![0], at));
    }
    if !(1..=100).contains(&count) {
        return Err(format!("{count} message indexes: not a Protobuf body of the wire format"));
    }
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let index = zigzag(&mut at)?;
        indexes.push(i32::try_from(index).map_err(|_| format!("message index {index} out of range"))?);
    }
    Ok((indexes, at))
}

/// Message indexes as the wire format writes them (`[0]` as the single byte 0).
pub fn write_message_indexes(out: &mut Vec<u8>, indexes: &[i32]) {
    if indexes == [0] {
        out.push(0);
        return;
    }
    write_zigzag(out, indexes.len() as i64);
    for index in indexes {
        write_zigzag(out, i64::from(*index));
    }
}

/// A zig-zag varint (at most 10 bytes), consumed from the front of `at`.
fn zigzag(at: &mut &[u8]) -> Result<i64, String> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let Some((&byte, rest)) = at.split_first() else {
            return Err("the message indexes end early".into());
        };
        *at = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err("a message index longer than 10 bytes".into())
}

fn write_zigzag(out: &mut Vec<u8>, value: i64) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_into_id_and_body() {
        let framed = frame(0x0102_0304, b"body");
        assert_eq!(framed[..5], [0, 1, 2, 3, 4]);
        assert_eq!(Framed::parse(&framed).unwrap(), Framed { id: 0x0102_0304, body: b"body" });
        assert_eq!(Framed::parse(&[0, 0, 0, 0, 7]).unwrap(), Framed { id: 7, body: b"" });
        for bad in [&b"{\"user_id\":1}"[..], &[0, 0, 1], &[]] {
            assert_eq!(Framed::parse(bad).unwrap_err().class, RejectClass::NotWireFormat);
        }
    }

    #[test]
    fn message_indexes_round_trip_with_the_short_form_of_the_first() {
        for indexes in [vec![0], vec![1], vec![2, 0, 5], vec![0, 1], vec![300]] {
            let mut out = Vec::new();
            write_message_indexes(&mut out, &indexes);
            out.extend_from_slice(b"rest");
            assert_eq!(message_indexes(&out).unwrap(), (indexes.clone(), &b"rest"[..]));
        }
        let mut first = Vec::new();
        write_message_indexes(&mut first, &[0]);
        assert_eq!(first, [0], "Confluent's short form");
        // Confluent's [1]: count 1 (zig-zag 2), index 1 (zig-zag 2).
        assert_eq!(message_indexes(&[2, 2, 9]).unwrap(), (vec![1], &[9][..]));
        assert!(message_indexes(&[0x80]).is_err());
    }
}
