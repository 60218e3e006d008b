//! Evaluating 100,000 schedules for one minute tick: what the schedule engine does on
//! every wake-up (which occurrences fell due in the last minute, and when the next one
//! is). `cargo bench --bench schedule_tick`; under `cargo test` it runs a short smoke
//! pass, so the benchmark keeps working.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use serde_json::json;
use smarthomed::protocol::schedule::Schedule;
use smarthomed::schedule::timing;

fn schedules(count: usize) -> Vec<Schedule> {
    (0..count)
        .map(|i| {
            let title = format!("schedule-{i}");
            let repeat = i % 10 != 0;
            let mut days = [false; 7];
            for (day, slot) in days.iter_mut().enumerate() {
                *slot = (i + day) % 3 != 0;
            }
            let mut document = json!({
                "title": title, "name": "bench", "repeat": repeat, "modeNum": i % 4, "enabled": i % 17 != 0,
                "startTime": format!("{:02}{:02}", (i / 60) % 24, i % 60), "daysOfWeek": days,
                "airconEnable": true, "airconWindPower": 5, "lightEnable": false, "lightBrightness": 0,
                "lightColor": 0, "lightMode": 0, "windowOpen": true, "gasValveEnable": false
            });
            if !repeat {
                document["activeDate"] = json!(format!("2026.11.{:02}", 1 + i % 30));
            }
            Schedule::from_document(&title, document.as_object().unwrap()).unwrap()
        })
        .collect()
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (count, rounds) = if full { (100_000, 50) } else { (1_000, 2) };
    let all = schedules(count);
    let zone = chrono_tz::Asia::Seoul;
    let tick = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();

    let mut due_times = Vec::with_capacity(rounds);
    let mut next_times = Vec::with_capacity(rounds);
    let mut due_count = 0;
    for round in 0..rounds {
        let to = tick + chrono::Duration::minutes(round as i64);
        let started = Instant::now();
        let due = timing::due_between(black_box(&all), to - chrono::Duration::minutes(1), to, zone);
        due_times.push(started.elapsed());
        due_count += due.len();
        let started = Instant::now();
        black_box(timing::next_after(black_box(&all), to, zone));
        next_times.push(started.elapsed());
    }
    due_times.sort();
    next_times.sort();
    let median = |times: &[Duration]| times[times.len() / 2].as_secs_f64() * 1000.0;
    println!("schedule tick over {count} schedules ({})", if full { "release" } else { "smoke run" });
    println!(
        "  due in the last minute: median {:.2} ms ({} due per tick on average)",
        median(&due_times),
        due_count / rounds
    );
    println!("  next due time:          median {:.2} ms", median(&next_times));
}
