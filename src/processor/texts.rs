//! The words users read: alarm texts and recommendations. Korean, as the old system
//! wrote them (typos included: apps may compare them), is the default; English is
//! selectable with `processor.language = "en"`.

use super::recommendation::Advice;
use crate::config::Language;
use crate::protocol::appliance::Change;

/// One alarm as the apps show it: text and icon name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmText {
    pub inform: String,
    pub icon: String,
}

pub fn alarm(language: Language, change: Change, mode_name: &str) -> AlarmText {
    let (inform, icon) = match (language, change) {
        (Language::Ko, Change::ModeRun(n)) => (format!("{mode_name}가 실행되었습니다."), format!("{n}mode_icon")),
        (Language::En, Change::ModeRun(n)) => (format!("{mode_name} started."), format!("{n}mode_icon")),
        (language, Change::Aircon(on)) => (
            pick(
                language,
                on,
                ["에어컨이 켜졌어요.", "에어컨이 꺼졌어요."],
                ["The air conditioner is on.", "The air conditioner is off."],
            ),
            "aircon_icon".into(),
        ),
        (language, Change::Light(on)) => (
            pick(language, on, ["전등이 켜졌어요.", "전등이 꺼졌어요."], ["The light is on.", "The light is off."]),
            "light_icon".into(),
        ),
        (language, Change::Window(open)) => (
            pick(
                language,
                open,
                ["창문이 열렸어요.", "창문이 닫혔어요."],
                ["The window opened.", "The window closed."],
            ),
            "window_icon".into(),
        ),
        (language, Change::GasValve(open)) => (
            pick(
                language,
                open,
                ["가스밸브가 열렸어요.", "가스밸브가 닫혔어요."],
                ["The gas valve opened.", "The gas valve closed."],
            ),
            "gasvalve_icon".into(),
        ),
    };
    AlarmText { inform, icon }
}

/// The alarm of a robot event.
pub fn robot_alarm(language: Language, alarm: &crate::robot::fleet::RobotAlarm) -> AlarmText {
    use crate::robot::fleet::RobotAlarm;
    let inform = match (language, alarm) {
        (Language::Ko, RobotAlarm::Estopped { name }) => format!("{name} 비상 정지되었어요."),
        (Language::En, RobotAlarm::Estopped { name }) => format!("{name} was emergency-stopped."),
        (Language::Ko, RobotAlarm::EstopUnconfirmed { name }) => format!("{name}의 비상 정지가 확인되지 않았어요."),
        (Language::En, RobotAlarm::EstopUnconfirmed { name }) => {
            format!("{name} has not confirmed its emergency stop.")
        }
        (Language::Ko, RobotAlarm::Fatal { name, error }) => format!("{name}에 오류가 생겼어요: {error}"),
        (Language::En, RobotAlarm::Fatal { name, error }) => format!("{name} failed: {error}"),
    };
    AlarmText { inform, icon: "robot_icon".into() }
}

fn pick(language: Language, first: bool, ko: [&str; 2], en: [&str; 2]) -> String {
    let texts = match language {
        Language::Ko => ko,
        Language::En => en,
    };
    texts[usize::from(!first)].to_owned()
}

/// The name of a mode that has no document, for its alarm.
pub fn unnamed_mode(language: Language, number: u8) -> String {
    match language {
        Language::Ko => format!("{number}번 모드"),
        Language::En => format!("Mode {number}"),
    }
}

/// The recommendation text; "none" (in every language) means nothing to say.
pub fn advice(language: Language, advice: Advice) -> &'static str {
    match (language, advice) {
        (_, Advice::Nothing) => "none",
        (Language::Ko, Advice::GasValveOpen) => "가스벨브가 열려있어요.",
        (Language::Ko, Advice::RainingCloseWindow) => "비가오니 창문을 닫아주세요.",
        (Language::Ko, Advice::RainForecastCloseWindow) => "비 소식이 있으니 창문을 닫아주세요.",
        (Language::Ko, Advice::SnowForecastCloseWindow) => "눈 소식이 있으니 창문을 닫아주세요.",
        (Language::Ko, Advice::BadAirCloseWindow) => "대기질이 나쁘니 창문을 닫아주세요.",
        (Language::En, Advice::GasValveOpen) => "The gas valve is open.",
        (Language::En, Advice::RainingCloseWindow) => "It is raining: please close the window.",
        (Language::En, Advice::RainForecastCloseWindow) => "Rain is forecast: please close the window.",
        (Language::En, Advice::SnowForecastCloseWindow) => "Snow is forecast: please close the window.",
        (Language::En, Advice::BadAirCloseWindow) => "The air is bad: please close the window.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn korean_alarms_are_the_old_texts_and_icons() {
        assert_eq!(
            alarm(Language::Ko, Change::ModeRun(3), "아침 모드"),
            AlarmText { inform: "아침 모드가 실행되었습니다.".into(), icon: "3mode_icon".into() }
        );
        for (change, inform, icon) in [
            (Change::Aircon(true), "에어컨이 켜졌어요.", "aircon_icon"),
            (Change::Aircon(false), "에어컨이 꺼졌어요.", "aircon_icon"),
            (Change::Light(true), "전등이 켜졌어요.", "light_icon"),
            (Change::Light(false), "전등이 꺼졌어요.", "light_icon"),
            (Change::Window(true), "창문이 열렸어요.", "window_icon"),
            (Change::Window(false), "창문이 닫혔어요.", "window_icon"),
            (Change::GasValve(true), "가스밸브가 열렸어요.", "gasvalve_icon"),
            (Change::GasValve(false), "가스밸브가 닫혔어요.", "gasvalve_icon"),
        ] {
            assert_eq!(alarm(Language::Ko, change, ""), AlarmText { inform: inform.into(), icon: icon.into() });
        }
    }

    #[test]
    fn english_is_selectable_and_none_stays_none() {
        assert_eq!(alarm(Language::En, Change::Window(true), "").inform, "The window opened.");
        assert_eq!(advice(Language::En, Advice::Nothing), "none");
        assert_eq!(advice(Language::Ko, Advice::GasValveOpen), "가스벨브가 열려있어요.");
    }
}
