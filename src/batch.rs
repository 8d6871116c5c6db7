//! The micro-batch being collected: parsed rows, refused messages and the offset range
//! read on each partition.
//!
//! Invariant: every offset read lands in exactly one place, a row or a dead letter, and
//! in the partition's range, so committing the range commits exactly what was handled.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::event::{self, ColumnType, EventSchema, RejectClass, Rejection};
use crate::table::Row;

/// A refused message, kept whole for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub rejection: Rejection,
    pub partition: i32,
    pub offset: i64,
}

/// The offsets a batch covers on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: i64,
    pub last: i64,
    pub messages: u64,
}

/// What decides, message by message, between a row and a dead letter.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The event schema: which fields make the key and the time, and the declared
    /// columns.
    pub schema: crate::event::EventSchema,
    /// The processed record's fields that follow the schema.
    pub fields: crate::output::processed::RecordFields,
    /// The contract's limit on a message (`max_message_bytes`).
    pub message_bytes: usize,
    /// The largest record idempipe produces ([`crate::config::Settings::max_record_bytes`]):
    /// a valid event whose processed record would be larger cannot be sent, so it is a
    /// dead letter, decided here, before anything is written.
    pub record_bytes: usize,
    /// The accepted event times, relative to when a message is read: at most this old
    /// (`max_event_age`) and this far ahead (`max_event_future`); `None`: no bound.
    pub max_age: Option<Duration>,
    pub max_future: Option<Duration>,
    /// With `message_format = "schema-registry"`: the registry that turns each message
    /// into the JSON the contract reads.
    pub registry: Option<std::sync::Arc<crate::registry::Registry>>,
}

impl Limits {
    pub fn of(settings: &crate::config::Settings) -> Self {
        Self {
            schema: settings.schema.clone(),
            fields: crate::output::processed::RecordFields::of(&settings.schema),
            message_bytes: settings.max_message_bytes,
            record_bytes: settings.max_record_bytes(),
            max_age: settings.event_window.max_age,
            max_future: settings.event_window.max_future,
            registry: None,
        }
    }

    /// A rejection when `time` lies outside the accepted window at `now`.
    fn outside_window(&self, time: crate::event::EventTime, now: crate::event::EventTime) -> Option<Rejection> {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let (t, now) = (time.micros(), now.micros());
        let too = if let Some(age) = self.max_age
            && t < now.saturating_sub(micros(age))
        {
            format!("more than {age:?} before the message's Kafka timestamp (`max_event_age`)")
        } else if let Some(ahead) = self.max_future
            && t > now.saturating_add(micros(ahead))
        {
            format!("more than {ahead:?} after the message's Kafka timestamp (`max_event_future`)")
        } else {
            return None;
        };
        Some(Rejection::new(RejectClass::EventTimeOutOfWindow, format!("the event time {time} is {too}")))
    }

    /// Rows whose message is this small always fit a record: the processed record holds
    /// the payload escaped (at most 6 bytes per byte), the key fields' values (parts of
    /// the message, as much again at most) and the key columns' names beside fields of
    /// bounded size.
    fn surely_fits(&self, message_bytes: usize) -> bool {
        const FIELDS: usize = 1024;
        // A declared column's normal form may be longer than its text in the message (a
        // timestamp of one digit, a decimal padded): those records are measured.
        if !self.fields.declared.is_empty() {
            return false;
        }
        let names: usize = self.fields.key.iter().map(|c| c.len() + 4).sum();
        message_bytes.saturating_mul(13).saturating_add(FIELDS + names) <= self.record_bytes
    }
}

/// One micro-batch under collection.
#[derive(Debug, Default)]
pub struct Batch {
    pub rows: Vec<Row>,
    pub dead_letters: Vec<DeadLetter>,
    pub ranges: BTreeMap<i32, Range>,
    pub bytes: usize,
    /// Time spent parsing and validating, summed over messages.
    pub parse_time: Duration,
    /// Set when shutdown came while a message waited for the schema registry: that
    /// message is in no row, dead letter or range, so the batch must not be committed.
    pub abandoned: Option<String>,
    /// Offsets the broker skipped inside the partition's range: the next message on a
    /// partition came later than the offset expected (the start Delta gave, or the
    /// previous message + 1). Transaction markers, aborted transactions' records
    /// (read_committed) and compaction: not losses, which are offsets below the
    /// partition's first ([`crate::kafka::ranges`]).
    pub offset_gaps: u64,
}

impl Batch {
    /// Parses one message into a row or a dead letter and extends its partition's range.
    pub fn add(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>, limits: &Limits) {
        self.add_at(partition, offset, key, value, limits, crate::event::EventTime::now);
    }

    /// [`Batch::add`], judging the event-time window against `reference()` (asked only
    /// when a window is set): the message's Kafka timestamp, so that reading the same
    /// message again (after a crash between the send and the Delta commit) decides the
    /// same way.
    pub(crate) fn add_at(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        limits: &Limits,
        reference: impl FnOnce() -> crate::event::EventTime,
    ) {
        let started = std::time::Instant::now();
        let length = value.map_or(0, <[u8]>::len);
        // In the wire format: the event as JSON, decoded by its schema.
        let decoded = match (&limits.registry, value) {
            (Some(registry), Some(bytes)) if bytes.len() <= limits.message_bytes => match registry.decode(bytes) {
                Ok(json) => Ok(Some(json)),
                Err(crate::registry::Undecoded::Rejected(rejection)) => Err(rejection),
                Err(crate::registry::Undecoded::Abandoned(why)) => {
                    self.abandoned = Some(why);
                    return;
                }
            },
            _ => Ok(None),
        };
        // The size limit is the message's (checked before decoding).
        let (text, max) = match &decoded {
            Ok(Some(json)) => (Some(json.as_bytes()), usize::MAX),
            _ => (value, limits.message_bytes),
        };
        let parsed =
            decoded.as_ref().map_err(Clone::clone).and_then(|_| event::parse_with(text, max, &limits.schema)).map(
                |e| {
                    let payload = limits.schema.payload_of(e.payload);
                    Row::from_event(e, payload, partition, offset)
                },
            );
        let parsed = parsed.and_then(|row| {
            if (limits.max_age.is_some() || limits.max_future.is_some())
                && let Some(rejection) = limits.outside_window(row.time, reference())
            {
                return Err(rejection);
            }
            if limits.surely_fits(length) {
                return Ok(row);
            }
            match crate::output::processed::record_bytes(&row, &limits.fields) {
                n if n <= limits.record_bytes => Ok(row),
                n => Err(Rejection::new(
                    RejectClass::TooLarge,
                    format!(
                        "the event's processed record would be {n} bytes (the payload escaped again), over the \
                         producer's limit of {} (librdkafka's `message.max.bytes` less {} bytes of batch overhead)",
                        limits.record_bytes,
                        crate::config::RECORD_BATCH_OVERHEAD
                    ),
                )),
            }
        });
        match parsed {
            Ok(mut row) => {
                if let Some(unplaced) = row.unplaced.as_mut() {
                    // A dead letter carries the message as it came.
                    unplaced.key = key.map(<[u8]>::to_vec);
                    unplaced.message = value.map(<[u8]>::to_vec).unwrap_or_default();
                }
                self.rows.push(row);
            }
            Err(rejection) => self.dead_letters.push(DeadLetter {
                key: key.map(<[u8]>::to_vec),
                value: value.map(<[u8]>::to_vec),
                rejection,
                partition,
                offset,
            }),
        }
        self.parse_time += started.elapsed();
        self.bytes += length;
        self.ranges
            .entry(partition)
            .and_modify(|r| {
                r.last = r.last.max(offset);
                r.first = r.first.min(offset);
                r.messages += 1;
            })
            .or_insert(Range { first: offset, last: offset, messages: 1 });
    }

    /// Offsets `from..to` of `partition` deliver nothing (transaction markers, aborted
    /// records read past at the partition's end): the range extends over them, counted as
    /// skipped, so the batch's commit stores the partition as read to `to`.
    pub(crate) fn skip(&mut self, partition: i32, from: i64, to: i64) {
        if to <= from {
            return;
        }
        self.offset_gaps += (to - from) as u64;
        self.ranges
            .entry(partition)
            .and_modify(|r| {
                r.last = r.last.max(to - 1);
                r.first = r.first.min(from);
            })
            .or_insert(Range { first: from, last: to - 1, messages: 0 });
    }

    /// Whether the batch reached `limits`' size (events or bytes): collection stops, and
    /// more may be waiting.
    pub(crate) fn is_at_limit(&self, limits: &crate::config::BatchLimits) -> bool {
        self.messages() >= limits.max_events.get() as u64 || self.bytes >= limits.max_bytes.get()
    }

    /// Moves the rows' declared values from `from`'s columns to `to`'s, by name (null in a
    /// column `from` does not have): the table's columns changed under the batch.
    pub(crate) fn follow(&mut self, from: &EventSchema, to: &EventSchema) {
        let moves: Vec<Option<usize>> =
            to.columns().iter().map(|c| from.columns().iter().position(|f| f.name == c.name)).collect();
        for row in &mut self.rows {
            let mut old = std::mem::take(&mut row.values);
            row.values = moves
                .iter()
                .map(|at| at.and_then(|i| old.get_mut(i)).map_or(serde_json::Value::Null, std::mem::take))
                .collect();
        }
    }

    /// Schema evolution: places the rows' unplaced fields ([`Row::unplaced`]) in the
    /// columns of `limits`' schema that hold them, each value checked against its column's type;
    /// a row with a value that does not fit (or whose record would then be too large)
    /// becomes a dead letter. Returns the columns to add for the fields left, with the
    /// type inferred from their values ([`ColumnType::inferred`]), and how many rows
    /// became dead letters.
    pub(crate) fn place(&mut self, limits: &Limits) -> (Vec<(String, ColumnType)>, u64) {
        let (schema, fields) = (&limits.schema, &limits.fields);
        let mut additions: Vec<(String, ColumnType)> = Vec::new();
        let mut refused = 0;
        let rows = std::mem::take(&mut self.rows);
        for mut row in rows {
            let Some(mut unplaced) = row.unplaced.take() else {
                self.rows.push(row);
                continue;
            };
            let mut left = Vec::new();
            let mut placed = false;
            let mut rejection = None;
            for (i, (name, value)) in unplaced.fields.iter().enumerate() {
                if unplaced.fields[..i].iter().any(|(n, _)| n == name) {
                    rejection = Some(Rejection::new(
                        RejectClass::DuplicateField,
                        format!("field `{name}` appears more than once"),
                    ));
                    break;
                }
                if let Some(column) = schema.column_of_field(name) {
                    match schema.columns()[column].kind.check(value, name) {
                        Ok(value) => row.values[column] = value,
                        Err(refusal) => {
                            rejection = Some(refusal);
                            break;
                        }
                    }
                    placed = true;
                } else if schema.may_add_column(name)
                    && let Some(kind) = ColumnType::inferred(value)
                {
                    match additions.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                        // Another spelling of a column to add: the field stays in `payload`.
                        Some((n, _)) if n != name => continue,
                        Some((_, known)) => {
                            // A value of a third type waits: the column's type refuses it.
                            if let Some(wider) = known.widened(&kind) {
                                *known = wider;
                            }
                        }
                        None => additions.push((name.clone(), kind)),
                    }
                    left.push((name.clone(), value.clone()));
                }
            }
            if rejection.is_none() && placed {
                let bytes = crate::output::processed::record_bytes(&row, fields);
                if bytes > limits.record_bytes {
                    rejection = Some(Rejection::new(
                        RejectClass::TooLarge,
                        format!(
                            "the event's processed record would be {bytes} bytes with its new columns, over the \
                             producer's limit of {}",
                            limits.record_bytes
                        ),
                    ));
                }
            }
            if let Some(rejection) = rejection {
                refused += 1;
                self.dead_letters.push(DeadLetter {
                    key: unplaced.key.take(),
                    value: Some(std::mem::take(&mut unplaced.message)),
                    rejection,
                    partition: row.source_partition,
                    offset: row.source_offset,
                });
                continue;
            }
            if !left.is_empty() {
                unplaced.fields = left;
                row.unplaced = Some(unplaced);
            }
            self.rows.push(row);
        }
        (additions, refused)
    }

    pub fn messages(&self) -> u64 {
        self.ranges.values().map(|r| r.messages).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Drops what another writer already stored: on each partition, every offset up to
    /// and including `stored[p]`. Returns the number of messages dropped.
    pub(crate) fn drop_stored(&mut self, stored: &BTreeMap<i32, i64>) -> u64 {
        let done = |p: i32, offset: i64| stored.get(&p).is_some_and(|s| offset <= *s);
        let before = self.messages();
        self.rows.retain(|r| !done(r.source_partition, r.source_offset));
        self.dead_letters.retain(|d| !done(d.partition, d.offset));
        let mut counts: BTreeMap<i32, u64> = BTreeMap::new();
        for p in self.rows.iter().map(|r| r.source_partition).chain(self.dead_letters.iter().map(|d| d.partition)) {
            *counts.entry(p).or_default() += 1;
        }
        self.ranges.retain(|p, r| match stored.get(p) {
            Some(s) if *s >= r.last => false,
            Some(s) if *s >= r.first => {
                r.first = s + 1;
                r.messages = counts.get(p).copied().unwrap_or(0);
                true
            }
            _ => true,
        });
        before - self.messages()
    }

    /// Drops what was collected of `partitions` (a rebalance took them away, or their
    /// reading starts over). Returns the number of messages dropped.
    pub(crate) fn drop_partitions(&mut self, partitions: &std::collections::BTreeSet<i32>) -> u64 {
        if partitions.is_empty() {
            return 0;
        }
        let before = self.messages();
        self.rows.retain(|r| !partitions.contains(&r.source_partition));
        self.dead_letters.retain(|d| !partitions.contains(&d.partition));
        self.ranges.retain(|p, _| !partitions.contains(p));
        before - self.messages()
    }

    /// Messages per partition, for the batch log.
    pub(crate) fn per_partition(&self) -> BTreeMap<i32, u64> {
        self.ranges.iter().map(|(p, r)| (*p, r.messages)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_limits() -> Limits {
        Limits {
            schema: crate::event::EventSchema::default(),
            fields: crate::output::processed::RecordFields::of_default(),
            message_bytes: 1024,
            record_bytes: 1 << 20,
            max_age: None,
            max_future: None,
            registry: None,
        }
    }

    #[test]
    fn event_times_outside_the_window_are_dead_letters_of_their_own_class() {
        let limits = Limits {
            max_age: Some(Duration::from_secs(30 * 86_400)),
            max_future: Some(Duration::from_secs(3_600)),
            ..default_limits()
        };
        let at = |t: &str| format!(r#"{{"user_id":"u","event_type":"e","timestamp":"{t}"}}"#).into_bytes();
        let now = crate::event::EventTime::now().micros();
        let iso = |micros: i64| crate::event::EventTime::from_micros(micros).unwrap().to_string();
        let mut b = Batch::default();
        b.add(0, 0, None, Some(&at(&iso(now - 29 * 86_400_000_000))), &limits);
        b.add(0, 1, None, Some(&at(&iso(now - 31 * 86_400_000_000))), &limits);
        b.add(0, 2, None, Some(&at(&iso(now + 1_800_000_000))), &limits);
        b.add(0, 3, None, Some(&at("9999-12-31T23:59:59Z")), &limits);
        b.add(0, 4, None, Some(&at("0001-01-01T00:00:00Z")), &default_limits());
        let kept: Vec<i64> = b.rows.iter().map(|r| r.source_offset).collect();
        assert_eq!(kept, vec![0, 2, 4], "no window: any year is an event");
        let dead: Vec<(i64, RejectClass)> = b.dead_letters.iter().map(|d| (d.offset, d.rejection.class)).collect();
        assert_eq!(dead, vec![(1, RejectClass::EventTimeOutOfWindow), (3, RejectClass::EventTimeOutOfWindow)]);
        assert!(b.dead_letters[0].rejection.message.contains("`max_event_age`"), "{}", b.dead_letters[0].rejection);
        assert!(b.dead_letters[1].rejection.message.contains("`max_event_future`"), "{}", b.dead_letters[1].rejection);
    }

    fn msg(n: u32) -> Vec<u8> {
        format!(r#"{{"user_id":"u{n}","event_type":"e","timestamp":{n}}}"#).into_bytes()
    }

    #[test]
    fn a_valid_event_whose_processed_record_would_not_fit_is_a_dead_letter() {
        let limits = Limits { message_bytes: 1 << 20, record_bytes: 10_000, ..default_limits() };
        let event =
            |field: &str| format!(r#"{{"user_id":"u","event_type":"e","timestamp":1,"note":"{field}"}}"#).into_bytes();
        let mut b = Batch::default();
        // 6,000 bytes of escaped quotes: escaped again in the processed record, 12,000.
        b.add(0, 1, None, Some(&event(&r#"\""#.repeat(3000))), &limits);
        // As long a message of letters fits.
        b.add(0, 2, None, Some(&event(&"a".repeat(6000))), &limits);
        assert_eq!(b.rows.len(), 1);
        assert_eq!(b.rows[0].source_offset, 2);
        assert!(crate::output::processed::record_bytes(&b.rows[0], &limits.fields) <= limits.record_bytes);
        let dead = &b.dead_letters[0];
        assert_eq!((dead.offset, dead.rejection.class), (1, RejectClass::TooLarge));
        assert!(dead.rejection.message.contains("processed record would be"), "{}", dead.rejection.message);
        assert_eq!(b.messages(), 2);
    }

    #[test]
    fn the_size_bound_holds_for_any_batch_id_and_time() {
        let message = msg(7);
        let event = event::parse(Some(&message), 1024).unwrap();
        let payload = Some(event.payload.to_owned());
        let row = Row::from_event(event, payload, 3, 99);
        let fields = crate::output::processed::RecordFields::of_default();
        let bound = crate::output::processed::record_bytes(&row, &fields);
        let time = crate::event::EventTime::from_micros(253_402_300_799_999_999).unwrap();
        let r = crate::output::processed::record("t", &fields, &row, i64::MIN, time);
        let actual = r.key.unwrap().len() + r.value.unwrap().len();
        assert!(actual <= bound, "{actual} > {bound}");
    }

    #[test]
    fn every_offset_is_a_row_or_a_dead_letter() {
        let mut b = Batch::default();
        b.add(0, 10, None, Some(&msg(1)), &default_limits());
        b.add(0, 11, None, Some(b"garbage"), &default_limits());
        b.add(1, 5, Some(b"k"), None, &default_limits());
        b.add(0, 12, None, Some(&msg(2)), &default_limits());
        assert_eq!(b.rows.len(), 2);
        assert_eq!(b.dead_letters.len(), 2);
        assert_eq!(b.messages(), 4);
        assert_eq!(b.ranges[&0], Range { first: 10, last: 12, messages: 3 });
        assert_eq!(b.ranges[&1], Range { first: 5, last: 5, messages: 1 });
        assert_eq!(b.dead_letters[1].key.as_deref(), Some(&b"k"[..]));
    }

    #[test]
    fn offsets_stored_by_another_writer_are_dropped() {
        let mut b = Batch::default();
        for offset in 10..20 {
            b.add(0, offset, None, Some(&msg(offset as u32)), &default_limits());
            b.add(1, offset, None, Some(b"bad"), &default_limits());
            b.add(2, offset, None, Some(&msg(offset as u32)), &default_limits());
        }
        let dropped = b.drop_stored(&BTreeMap::from([(0, 14), (1, 25), (2, 3)]));
        assert_eq!(dropped, 5 + 10);
        assert_eq!(b.ranges[&0], Range { first: 15, last: 19, messages: 5 });
        assert!(!b.ranges.contains_key(&1));
        assert_eq!(b.ranges[&2], Range { first: 10, last: 19, messages: 10 });
        assert_eq!(b.rows.len(), 15);
        assert!(b.dead_letters.is_empty());
    }

    #[test]
    fn offsets_skipped_at_the_end_extend_the_range_without_messages() {
        let mut b = Batch::default();
        b.add(0, 10, None, Some(&msg(1)), &default_limits());
        b.skip(0, 11, 13);
        b.skip(1, 40, 41);
        b.skip(2, 7, 7);
        assert_eq!(b.ranges[&0], Range { first: 10, last: 12, messages: 1 });
        assert_eq!(b.ranges[&1], Range { first: 40, last: 40, messages: 0 });
        assert!(!b.ranges.contains_key(&2), "nothing skipped");
        assert_eq!((b.offset_gaps, b.messages()), (3, 1));
    }

    #[test]
    fn dropping_partitions_keeps_the_others_whole() {
        let mut b = Batch::default();
        for offset in 0..5 {
            b.add(0, offset, None, Some(&msg(offset as u32)), &default_limits());
            b.add(1, offset, None, Some(b"bad"), &default_limits());
            b.add(2, offset, None, Some(&msg(100 + offset as u32)), &default_limits());
        }
        assert_eq!(b.drop_partitions(&std::collections::BTreeSet::from([1, 2])), 10);
        assert_eq!(b.ranges.keys().copied().collect::<Vec<_>>(), [0]);
        assert_eq!((b.rows.len(), b.dead_letters.len(), b.messages()), (5, 0, 5));
    }

    fn limits(schema: &EventSchema) -> Limits {
        Limits {
            schema: schema.clone(),
            fields: crate::output::processed::RecordFields::of(schema),
            message_bytes: 1 << 20,
            record_bytes: 1 << 20,
            max_age: None,
            max_future: None,
            registry: None,
        }
    }

    #[test]
    fn unplaced_fields_make_columns_then_fill_them_or_dead_letters() {
        use crate::event::SchemaEvolution;
        let evolving = EventSchema::default().with_evolution(SchemaEvolution::AddColumns);
        let mut batch = Batch::default();
        let messages = [
            r#"{"user_id":"u1","event_type":"e","timestamp":1,"coupon":"A","n":1}"#,
            r#"{"user_id":"u2","event_type":"e","timestamp":1,"n":2.5,"Coupon":"B"}"#,
            r#"{"user_id":"u3","event_type":"e","timestamp":1,"coupon":7}"#,
            r#"{"user_id":"u4","event_type":"e","timestamp":1,"payload":"x","coupon":"C","coupon":"D"}"#,
        ];
        for (offset, m) in messages.iter().enumerate() {
            batch.add(0, offset as i64, Some(b"k"), Some(m.as_bytes()), &limits(&evolving));
        }
        assert_eq!((batch.rows.len(), batch.dead_letters.len()), (4, 0));
        let (additions, refused) = batch.place(&limits(&evolving));
        // The first value's type; an integer and a number make a double; another spelling
        // of a name stays in the payload; the reserved `payload` is never a column.
        assert_eq!(additions, [("coupon".to_owned(), ColumnType::String), ("n".to_owned(), ColumnType::Double)]);
        assert_eq!((refused, batch.dead_letters.len()), (1, 1));
        assert_eq!(batch.dead_letters[0].rejection.class, RejectClass::DuplicateField);
        assert_eq!(batch.dead_letters[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(batch.dead_letters[0].value.as_deref(), Some(messages[3].as_bytes()));

        // The table took the columns: the rows follow and are placed.
        let spec = |name: &str, kind: ColumnType| crate::event::ColumnSpec {
            name: name.into(),
            field: crate::event::FieldPath::parse(name).unwrap(),
            kind,
            required: false,
        };
        let grown = EventSchema::new(
            crate::event::Identity::default(),
            vec![spec("coupon", ColumnType::String), spec("n", ColumnType::Double)],
            crate::event::PayloadMode::Message,
        )
        .unwrap()
        .with_evolution(SchemaEvolution::AddColumns);
        batch.follow(&evolving, &grown);
        let (additions, refused) = batch.place(&limits(&grown));
        assert!(additions.is_empty());
        assert_eq!(refused, 1, "coupon 7 is no string");
        let refusal = &batch.dead_letters[1].rejection;
        assert_eq!((refusal.class, batch.dead_letters[1].offset), (RejectClass::WrongType, 2));
        assert!(refusal.message.contains("`coupon`"), "{}", refusal.message);
        let values: Vec<&[serde_json::Value]> = batch.rows.iter().map(|r| r.values.as_slice()).collect();
        let (a, n1, n2) = (serde_json::json!("A"), serde_json::json!(1), serde_json::json!(2.5));
        assert_eq!(values, [&[a, n1][..], &[serde_json::Value::Null, n2]]);
        assert!(batch.rows.iter().all(|r| r.unplaced.is_none()), "the other spelling is not placed");
    }
}
