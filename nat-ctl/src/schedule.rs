//! Rule schedules: the weekly windows in which a rule lets remotes in,
//! such as `mon-fri 09:00-18:00, sat 10:00-12:00`, in the router's local
//! time zone. Windows are wall-clock times, so they follow daylight saving
//! time: an edge in a skipped hour moves forward by the length of the gap
//! (02:30 becomes 03:30), one in a repeated hour is its first occurrence
//! (jiff's "compatible" disambiguation, as RFC 5545 does for calendars).
use std::{fmt, str::FromStr};

use jiff::{
    Timestamp, Zoned,
    civil::{Date, Weekday},
    tz::TimeZone,
};
use serde::{Deserialize, Serialize};

/// What a schedule may look like, for every parse error.
pub const SYNTAX: &str = "expected \"always\" or windows \"[DAYS] HH:MM-HH:MM\" separated by \
     commas, DAYS being mon..sun, a range such as mon-fri or fri-mon, or daily; an end before \
     the start ends the next day, e.g. \"mon-fri 09:00-18:00, fri 22:00-02:00\"";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad schedule {part:?}: {reason}; {SYNTAX}")]
pub struct ScheduleError {
    /// The part of the schedule at fault.
    pub part: String,
    pub reason: &'static str,
}

/// The days a window opens on: `first` to `last`, wrapping past Sunday.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Days {
    first: Weekday,
    last: Weekday,
}

impl Days {
    const DAILY: Days = Days {
        first: Weekday::Monday,
        last: Weekday::Sunday,
    };

    fn contains(self, day: Weekday) -> bool {
        let offset = |day: Weekday| day.to_monday_zero_offset();
        let span = (offset(self.last) - offset(self.first)).rem_euclid(7);
        (offset(day) - offset(self.first)).rem_euclid(7) <= span
    }
}

const DAY_NAMES: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

fn day_name(day: Weekday) -> &'static str {
    DAY_NAMES[day.to_monday_zero_offset() as usize].0
}

/// One weekly window: from `start` on each of `days` until `end`, the
/// same day, or the next one when `end` is not after `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    days: Days,
    /// Minutes after midnight, 0..1440.
    start: u16,
    /// Minutes after midnight, 1..=1440 (24:00).
    end: u16,
}

impl Window {
    fn crosses_midnight(self) -> bool {
        self.end <= self.start
    }

    /// The instants this window opens and closes when it opens on `date`
    /// (if it opens that day).
    fn on(self, date: Date, tz: &TimeZone) -> Option<(Timestamp, Timestamp)> {
        if !self.days.contains(date.weekday()) {
            return None;
        }
        let start = at_minute(date, self.start, tz)?;
        let end_date = if self.crosses_midnight() {
            date.tomorrow().ok()?
        } else {
            date
        };
        let end = at_minute(end_date, self.end, tz)?;
        Some((start, end))
    }
}

/// `minute` minutes after the start of `date`'s day (1440: the next
/// midnight), as an instant in `tz`.
fn at_minute(date: Date, minute: u16, tz: &TimeZone) -> Option<Timestamp> {
    let (date, minute) = if minute >= 1440 {
        (date.tomorrow().ok()?, minute - 1440)
    } else {
        (date, minute)
    };
    let time = date.at((minute / 60) as i8, (minute % 60) as i8, 0, 0);
    tz.to_zoned(time).ok().map(|zoned| zoned.timestamp())
}

/// A rule's schedule: no windows means always on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Schedule {
    windows: Vec<Window>,
}

impl Schedule {
    /// On at all times: the rule has no schedule.
    pub fn is_always(&self) -> bool {
        self.windows.is_empty()
    }

    /// Every window opening within a day before `now`'s date and a week
    /// after it: enough to see the one `now` is in and the next edge.
    fn openings<'a>(&'a self, now: &'a Zoned) -> impl Iterator<Item = (Timestamp, Timestamp)> + 'a {
        let today = now.date();
        (-1..=7i64).flat_map(move |offset| {
            let date = today.checked_add(jiff::Span::new().days(offset)).ok();
            self.windows
                .iter()
                .filter_map(move |window| window.on(date?, now.time_zone()))
        })
    }

    /// Whether a rule with this schedule lets remotes in at `now`.
    pub fn is_on(&self, now: &Zoned) -> bool {
        let instant = now.timestamp();
        self.is_always()
            || self
                .openings(now)
                .any(|(start, end)| start <= instant && instant < end)
    }

    /// The next instant after `now` at which a window opens or closes (the
    /// rule may be on, or off, on both sides of it where windows overlap or
    /// touch).
    pub fn next_edge(&self, now: &Zoned) -> Option<Timestamp> {
        // Most rules have no schedule, and every rule change asks every
        // rule: without windows there are no nine days of dates to work
        // out (a microsecond a rule, a millisecond per UPnP request with
        // 1000 mappings held).
        if self.is_always() {
            return None;
        }
        let instant = now.timestamp();
        self.openings(now)
            .flat_map(|(start, end)| [start, end])
            .filter(|edge| *edge > instant)
            .min()
    }

    /// Until when the rule stays as it is at `now`: the next edge where it
    /// actually switches (touching or overlapping windows do not switch it).
    pub fn switches_at(&self, now: &Zoned) -> Option<Zoned> {
        let on = self.is_on(now);
        let mut at = now.clone();
        // Bounded: a week holds at most two edges per window and day.
        for _ in 0..(self.windows.len() * 16 + 1) {
            let edge = self.next_edge(&at)?.to_zoned(now.time_zone().clone());
            if self.is_on(&edge) != on {
                return Some(edge);
            }
            at = edge;
        }
        None
    }
}

/// `mon 09:00`, as `natctl list` says when a rule switches.
pub fn short_local(when: &Zoned) -> String {
    format!("{} {}", day_name(when.weekday()), when.strftime("%H:%M"))
}

fn parse_time(text: &str, part: &str, end: bool) -> Result<u16, ScheduleError> {
    let bad = |reason| ScheduleError {
        part: part.to_owned(),
        reason,
    };
    let (hours, minutes) = text
        .split_once(':')
        .ok_or(bad("a time must be HH:MM, e.g. 09:00"))?;
    let number = |digits: &str| {
        (digits.len() == 2 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<u16>().ok())
            .flatten()
    };
    let (Some(hours), Some(minutes)) = (number(hours), number(minutes)) else {
        return Err(bad("a time must be HH:MM with two digits each, e.g. 09:00"));
    };
    if minutes > 59 || hours > 24 || (hours == 24 && (minutes != 0 || !end)) {
        return Err(bad(
            "a time must be from 00:00 to 23:59 (24:00 only as an end)",
        ));
    }
    Ok(hours * 60 + minutes)
}

fn parse_day(text: &str, part: &str) -> Result<Weekday, ScheduleError> {
    let lower = text.to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .find(|(name, _)| {
            lower == *name
                || (lower.len() > 3 && lower.starts_with(name) && full_name(name, &lower))
        })
        .map(|(_, day)| *day)
        .ok_or(ScheduleError {
            part: part.to_owned(),
            reason: "unknown day: use mon, tue, wed, thu, fri, sat or sun",
        })
}

/// `monday`, `tuesday`...: the full names are accepted too.
fn full_name(short: &str, text: &str) -> bool {
    let full = match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    };
    text == full
}

fn parse_window(part: &str) -> Result<Window, ScheduleError> {
    let bad = |reason| ScheduleError {
        part: part.to_owned(),
        reason,
    };
    let mut words = part.split_whitespace();
    let (days, times) = match (words.next(), words.next(), words.next()) {
        (Some(times), None, _) => (Days::DAILY, times),
        (Some(days), Some(times), None) => {
            let days = match days.to_ascii_lowercase().as_str() {
                "daily" | "every" | "*" => Days::DAILY,
                _ => match days.split_once('-') {
                    Some((first, last)) => Days {
                        first: parse_day(first, part)?,
                        last: parse_day(last, part)?,
                    },
                    None => {
                        let day = parse_day(days, part)?;
                        Days {
                            first: day,
                            last: day,
                        }
                    }
                },
            };
            (days, times)
        }
        (None, ..) => return Err(bad("an empty window")),
        _ => return Err(bad("a window is DAYS and one time range")),
    };
    let (start, end) = times
        .split_once('-')
        .ok_or(bad("the time range must be HH:MM-HH:MM"))?;
    let start = parse_time(start, part, false)?;
    let end = parse_time(end, part, true)?;
    if start == end {
        return Err(bad(
            "the window starts and ends at the same time; for a whole day write 00:00-24:00",
        ));
    }
    Ok(Window { days, start, end })
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(text: &str) -> Result<Self, ScheduleError> {
        let trimmed = text.trim();
        if trimmed.eq_ignore_ascii_case("always") {
            return Ok(Self::default());
        }
        if trimmed.is_empty() {
            return Err(ScheduleError {
                part: text.to_owned(),
                reason: "an empty schedule",
            });
        }
        let windows = trimmed
            .split(',')
            .map(|part| parse_window(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { windows })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_always() {
            return f.write_str("always");
        }
        for (index, window) in self.windows.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            let Days { first, last } = window.days;
            if window.days == Days::DAILY {
                f.write_str("daily")?;
            } else if first == last {
                f.write_str(day_name(first))?;
            } else {
                write!(f, "{}-{}", day_name(first), day_name(last))?;
            }
            let time = |minute: u16| format!("{:02}:{:02}", minute / 60, minute % 60);
            write!(f, " {}-{}", time(window.start), time(window.end))?;
        }
        Ok(())
    }
}

impl TryFrom<String> for Schedule {
    type Error = ScheduleError;
    fn try_from(text: String) -> Result<Self, ScheduleError> {
        text.parse()
    }
}

impl From<Schedule> for String {
    fn from(schedule: Schedule) -> String {
        schedule.to_string()
    }
}

/// Where the daemon reads the time for schedules. The system clock in
/// production; the end-to-end tests start the daemon with a clock that
/// runs from a given instant (`natctl daemon --schedule-clock-start`), so
/// that a window edge is seconds away whatever the real time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// The real clock shifted by a fixed amount: it runs at the real rate from
/// the instant it was started at.
pub struct ShiftedClock {
    offset_ms: i64,
}

impl ShiftedClock {
    pub fn starting_at(start: Timestamp) -> Self {
        Self {
            offset_ms: start.as_millisecond() - Timestamp::now().as_millisecond(),
        }
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> Timestamp {
        let shifted = Timestamp::now().as_millisecond() + self.offset_ms;
        Timestamp::from_millisecond(shifted).unwrap_or_else(|_| Timestamp::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, zone: &str) -> Zoned {
        let tz = TimeZone::get(zone).unwrap();
        text.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(tz)
            .unwrap()
    }

    fn schedule(text: &str) -> Schedule {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_the_canonical_form() {
        for (text, canonical) in [
            ("mon-fri 09:00-18:00", "mon-fri 09:00-18:00"),
            (
                "Mon-Fri 09:00-18:00,sat 10:00-12:00",
                "mon-fri 09:00-18:00, sat 10:00-12:00",
            ),
            ("friday 22:00-02:00", "fri 22:00-02:00"),
            ("08:00-09:30", "daily 08:00-09:30"),
            ("sat-sun 00:00-24:00", "sat-sun 00:00-24:00"),
            ("always", "always"),
        ] {
            let parsed = schedule(text);
            assert_eq!(parsed.to_string(), canonical, "{text}");
            assert_eq!(schedule(canonical), parsed);
        }
    }

    #[test]
    fn errors_name_the_bad_part_and_the_syntax() {
        for (text, part) in [
            ("mon-fri 09:00-18:00, sta 10:00-12:00", "sta 10:00-12:00"),
            ("mon 9:00-18:00", "mon 9:00-18:00"),
            ("mon 09:00-25:00", "mon 09:00-25:00"),
            ("mon 24:00-02:00", "mon 24:00-02:00"),
            ("mon 09:00", "mon 09:00"),
            ("mon 10:00-10:00", "mon 10:00-10:00"),
            ("mon 09:00-10:00 extra", "mon 09:00-10:00 extra"),
            ("mon-fri 09:00-18:00,", ""),
        ] {
            let error = text.parse::<Schedule>().unwrap_err();
            assert_eq!(error.part, part, "{text}");
            let message = error.to_string();
            assert!(
                message.contains(&format!("{part:?}")) && message.contains("HH:MM-HH:MM"),
                "{message}"
            );
        }
    }

    #[test]
    fn business_hours_switch_at_their_edges() {
        let hours = schedule("mon-fri 09:00-18:00");
        // 2026-12-07 is a Monday.
        assert!(!hours.is_on(&at("2026-12-07T08:59:59", "UTC")));
        assert!(hours.is_on(&at("2026-12-07T09:00:00", "UTC")));
        assert!(hours.is_on(&at("2026-12-07T17:59:59", "UTC")));
        assert!(!hours.is_on(&at("2026-12-07T18:00:00", "UTC")));
        assert!(!hours.is_on(&at("2026-12-12T12:00:00", "UTC")));
        // Friday evening: off until Monday morning.
        let friday = at("2026-12-11T18:30:00", "UTC");
        let next = hours.switches_at(&friday).unwrap();
        assert_eq!(next, at("2026-12-14T09:00:00", "UTC"));
        assert_eq!(short_local(&next), "mon 09:00");
    }

    #[test]
    fn a_window_may_cross_midnight_and_the_week_end() {
        let late = schedule("sun 22:00-02:00");
        assert!(late.is_on(&at("2026-12-13T23:00:00", "UTC")));
        // Monday 01:00 belongs to Sunday's window.
        assert!(late.is_on(&at("2026-12-14T01:00:00", "UTC")));
        assert!(!late.is_on(&at("2026-12-14T02:00:00", "UTC")));
        assert!(!late.is_on(&at("2026-12-14T23:00:00", "UTC")));
        let wrapping = schedule("fri-mon 12:00-13:00");
        assert!(wrapping.is_on(&at("2026-12-13T12:30:00", "UTC")));
        assert!(!wrapping.is_on(&at("2026-12-09T12:30:00", "UTC")));
    }

    #[test]
    fn touching_windows_do_not_switch_the_rule() {
        let nights = schedule("daily 00:00-24:00");
        let now = at("2026-12-07T10:00:00", "UTC");
        assert!(nights.is_on(&now));
        assert_eq!(nights.switches_at(&now), None);
        let split = schedule("mon 08:00-12:00, mon 12:00-14:00");
        let next = split
            .switches_at(&at("2026-12-07T09:00:00", "UTC"))
            .unwrap();
        assert_eq!(next, at("2026-12-07T14:00:00", "UTC"));
    }

    #[test]
    fn windows_follow_daylight_saving_time() {
        // Europe/Berlin leaves summer time on 2026-10-25 (a Sunday) at
        // 03:00 local: 09:00 that day is 08:00 UTC, the day before 07:00.
        let hours = schedule("daily 09:00-10:00");
        let saturday = at("2026-10-24T09:30:00", "Europe/Berlin");
        assert!(hours.is_on(&saturday));
        let sunday_utc: Timestamp = "2026-10-25T08:30:00Z".parse().unwrap();
        let sunday = sunday_utc.to_zoned(TimeZone::get("Europe/Berlin").unwrap());
        assert!(hours.is_on(&sunday), "{sunday}");
        let before: Timestamp = "2026-10-25T07:30:00Z".parse().unwrap();
        assert!(!hours.is_on(&before.to_zoned(TimeZone::get("Europe/Berlin").unwrap())));
        // On the day summer time starts (2026-03-29), 02:30 does not exist:
        // the window opens at 03:30 local, moved forward by the gap.
        let gap = schedule("sun 02:30-04:00");
        let edge = gap
            .switches_at(&at("2026-03-29T01:00:00", "Europe/Berlin"))
            .unwrap();
        assert_eq!(edge.timestamp(), "2026-03-29T01:30:00Z".parse().unwrap());
    }
}
