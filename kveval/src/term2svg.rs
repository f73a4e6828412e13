//! Renders captured terminal text as an SVG "screenshot" of a terminal window.
//!
//! Basic ANSI SGR colours are honoured (30–37, 90–97, 256-colour and true-colour foregrounds, bold,
//! reset); every other escape sequence is stripped. Lines starting with `$ ` are drawn in a highlight
//! colour, as shell prompts. A carriage return inside a line keeps only what follows it (as a
//! terminal would show an overwritten progress line); tabs are expanded to 8-column stops.

use std::fmt::Write as _;

/// Font stack of the terminal text.
pub const FONT_FAMILY: &str = "DejaVu Sans Mono, Menlo, Consolas, monospace";
const FONT_SIZE: f64 = 14.0;
/// Advance of one monospace character (about 0.6 em in the fonts of [`FONT_FAMILY`]).
const CHAR_WIDTH: f64 = FONT_SIZE * 0.602;
const LINE_HEIGHT: f64 = FONT_SIZE * 1.3;
const PAD_X: f64 = 16.0;
const PAD_TOP: f64 = 12.0;
const PAD_BOTTOM: f64 = 14.0;
const TITLE_BAR: f64 = 30.0;
const BACKGROUND: &str = "#1e2127";
const TITLE_BACKGROUND: &str = "#2c313a";
const TITLE_TEXT: &str = "#9da5b4";
const FOREGROUND: &str = "#d7dae0";
const PROMPT: &str = "#98c379";
const NORMAL: [&str; 8] = [
    "#5c6370", "#e06c75", "#98c379", "#e5c07b", "#61afef", "#c678dd", "#56b6c2", "#d7dae0",
];
const BRIGHT: [&str; 8] = [
    "#7f848e", "#ff7b86", "#b5e890", "#ffd68a", "#82c4ff", "#e0a3ff", "#7fdbe6", "#ffffff",
];

/// How the text of a span is drawn.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Style {
    /// Foreground colour (`#rrggbb`); `None` for the line's default.
    pub fg: Option<String>,
    /// Bold weight.
    pub bold: bool,
}

/// A run of text with one style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The text, without control characters.
    pub text: String,
    /// Its style.
    pub style: Style,
}

/// One line of terminal output.
pub type Line = Vec<Span>;

/// Escapes text for XML character data and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The colour of entry `n` of the xterm 256-colour palette.
fn color256(n: u8) -> String {
    match n {
        0..=7 => NORMAL[n as usize].to_string(),
        8..=15 => BRIGHT[n as usize - 8].to_string(),
        16..=231 => {
            let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
            let n = n - 16;
            format!(
                "#{:02x}{:02x}{:02x}",
                level(n / 36),
                level(n / 6 % 6),
                level(n % 6)
            )
        }
        232..=255 => {
            let v = 8 + (n - 232) * 10;
            format!("#{v:02x}{v:02x}{v:02x}")
        }
    }
}

/// Applies the parameters of one SGR sequence (`ESC [ params m`) to a style.
fn apply_sgr(style: &mut Style, params: &str) {
    let codes: Vec<u32> = params.split(';').map(|p| p.parse().unwrap_or(0)).collect();
    let mut i = 0;
    while i < codes.len() {
        match codes[i] {
            0 => *style = Style::default(),
            1 => style.bold = true,
            22 => style.bold = false,
            c @ 30..=37 => style.fg = Some(NORMAL[(c - 30) as usize].to_string()),
            c @ 90..=97 => style.fg = Some(BRIGHT[(c - 90) as usize].to_string()),
            39 => style.fg = None,
            c @ (38 | 48) => {
                let color = match codes.get(i + 1) {
                    Some(5) => {
                        let n = codes.get(i + 2).copied().unwrap_or(0);
                        i += 2;
                        Some(color256(n.min(255) as u8))
                    }
                    Some(2) => {
                        let part = |k: usize| codes.get(i + k).copied().unwrap_or(0).min(255);
                        let rgb = format!("#{:02x}{:02x}{:02x}", part(2), part(3), part(4));
                        i += 4;
                        Some(rgb)
                    }
                    _ => None,
                };
                if c == 38 {
                    style.fg = color.or(style.fg.take());
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// Accumulates spans of the current line.
#[derive(Default)]
struct LineBuilder {
    spans: Line,
    cols: usize,
}

impl LineBuilder {
    fn push(&mut self, c: char, style: &Style) {
        match self.spans.last_mut() {
            Some(last) if &last.style == style => last.text.push(c),
            _ => self.spans.push(Span {
                text: c.to_string(),
                style: style.clone(),
            }),
        }
        self.cols += 1;
    }

    fn take(&mut self) -> Line {
        self.cols = 0;
        std::mem::take(&mut self.spans)
    }
}

/// Splits captured terminal output into styled lines, interpreting SGR sequences and dropping every
/// other escape sequence and control character. Trailing blank lines are dropped.
pub fn parse(input: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut line = LineBuilder::default();
    let mut style = Style::default();
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    let mut params = String::new();
                    for p in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&p) {
                            if p == 'm' {
                                apply_sgr(&mut style, &params);
                            }
                            break;
                        }
                        params.push(p);
                    }
                }
                Some(']' | 'P' | '_' | '^') => {
                    // OSC, DCS, APC, PM: up to BEL or ST (ESC \).
                    while let Some(p) = chars.next() {
                        if p == '\x07' || (p == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                Some('(' | ')' | '*' | '+') => {
                    chars.next();
                }
                _ => {}
            },
            '\n' => lines.push(line.take()),
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    line.take();
                }
            }
            '\t' => {
                for _ in 0..(8 - line.cols % 8) {
                    line.push(' ', &style);
                }
            }
            c if c.is_control() => {}
            c => line.push(c, &style),
        }
    }
    if !line.spans.is_empty() {
        lines.push(line.take());
    }
    while lines.last().is_some_and(|l| plain(l).trim().is_empty()) {
        lines.pop();
    }
    lines
}

/// The text of a line without styling.
pub fn plain(line: &[Span]) -> String {
    line.iter().map(|s| s.text.as_str()).collect()
}

/// Cuts a line to at most `cols` characters and drops trailing whitespace.
fn truncate(line: &[Span], cols: usize) -> Line {
    let keep = plain(line).trim_end().chars().count().min(cols);
    let mut out = Vec::new();
    let mut left = keep;
    for span in line {
        if left == 0 {
            break;
        }
        let text: String = span.text.chars().take(left).collect();
        left -= text.chars().count();
        out.push(Span {
            text,
            style: span.style.clone(),
        });
    }
    out
}

/// Options of [`render`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Window title.
    pub title: String,
    /// Width in columns; longer lines are cut. Default: the longest line.
    pub width_cols: Option<usize>,
}

/// Renders terminal output as an SVG document.
pub fn render(input: &str, options: &Options) -> String {
    let lines = parse(input);
    let longest = lines
        .iter()
        .map(|l| plain(l).trim_end().chars().count())
        .max()
        .unwrap_or(0);
    let cols = options.width_cols.unwrap_or(longest).max(1);
    let title_width = options.title.chars().count() as f64 * 7.5 + 160.0;
    let width = (2.0 * PAD_X + cols as f64 * CHAR_WIDTH).max(title_width).ceil();
    let height = (TITLE_BAR + PAD_TOP + lines.len().max(1) as f64 * LINE_HEIGHT + PAD_BOTTOM).ceil();

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{width}" height="{height}" rx="8" fill="{BACKGROUND}"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<path d="M0 {TITLE_BAR} V8 A8 8 0 0 1 8 0 H{w8} A8 8 0 0 1 {width} 8 V{TITLE_BAR} Z" fill="{TITLE_BACKGROUND}"/>"#,
        w8 = width - 8.0
    );
    for (i, color) in ["#ff5f56", "#ffbd2e", "#27c93f"].iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<circle cx="{}" cy="15" r="6" fill="{color}"/>"#,
            20 + i * 20
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-family="sans-serif" font-size="13" fill="{TITLE_TEXT}">{}</text>"#,
        width / 2.0,
        xml_escape(&options.title)
    );
    let _ = writeln!(
        svg,
        r#"<g font-family="{FONT_FAMILY}" font-size="{FONT_SIZE}" fill="{FOREGROUND}">"#
    );
    for (i, line) in lines.iter().enumerate() {
        let y = TITLE_BAR + PAD_TOP + i as f64 * LINE_HEIGHT + FONT_SIZE;
        let prompt = plain(line).starts_with("$ ");
        let attrs = if prompt {
            format!(r#" fill="{PROMPT}" font-weight="bold""#)
        } else {
            String::new()
        };
        let _ = write!(
            svg,
            r#"<text x="{PAD_X}" y="{y:.1}" xml:space="preserve"{attrs}>"#
        );
        for span in truncate(line, cols) {
            let text = xml_escape(&span.text);
            let mut attrs = String::new();
            if let Some(fg) = &span.style.fg {
                let _ = write!(attrs, r#" fill="{fg}""#);
            }
            if span.style.bold && !prompt {
                attrs.push_str(r#" font-weight="bold""#);
            }
            if attrs.is_empty() {
                svg.push_str(&text);
            } else {
                let _ = write!(svg, "<tspan{attrs}>{text}</tspan>");
            }
        }
        svg.push_str("</text>\n");
    }
    svg.push_str("</g>\n</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_xml() {
        assert_eq!(xml_escape(r#"a<b> & "c""#), "a&lt;b&gt; &amp; &quot;c&quot;");
        let svg = render(
            "if a < b && c > d {}\n",
            &Options {
                title: "x<y".into(),
                width_cols: None,
            },
        );
        assert!(svg.contains("if a &lt; b &amp;&amp; c &gt; d {}"));
        assert!(svg.contains(">x&lt;y</text>"));
        assert!(!svg.contains("a < b"));
    }

    #[test]
    fn interprets_sgr_colours_and_bold() {
        let lines = parse("plain \x1b[31mred\x1b[0m \x1b[1;92mbold green\x1b[22m not bold\x1b[39m\n");
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(
            l[0],
            Span {
                text: "plain ".into(),
                style: Style::default()
            }
        );
        assert_eq!(l[1].text, "red");
        assert_eq!(l[1].style.fg.as_deref(), Some(NORMAL[1]));
        assert_eq!(l[3].text, "bold green");
        assert_eq!(
            l[3].style,
            Style {
                fg: Some(BRIGHT[2].into()),
                bold: true
            }
        );
        assert_eq!(
            l[4].style,
            Style {
                fg: Some(BRIGHT[2].into()),
                bold: false
            }
        );
        let svg = render("\x1b[31mred\x1b[0m\n", &Options::default());
        assert!(svg.contains(&format!(r#"<tspan fill="{}">red</tspan>"#, NORMAL[1])));
    }

    #[test]
    fn extended_colours() {
        let l = &parse("\x1b[38;5;196mA\x1b[38;2;1;2;3mB\x1b[48;5;4mC")[0];
        assert_eq!(l[0].style.fg.as_deref(), Some("#ff0000"));
        assert_eq!(l[1].style.fg.as_deref(), Some("#010203"));
        assert_eq!(l[1].text, "BC", "a background colour changes nothing");
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn strips_other_escapes_and_controls() {
        let input =
            "\x1b]0;window title\x07\x1b[2K\x1b[1Gdone\x1b(B\x07\x08!\r\nprogress 10%\rprogress 100%\n";
        let lines: Vec<String> = parse(input).iter().map(|l| plain(l)).collect();
        assert_eq!(lines, ["done!", "progress 100%"]);
    }

    #[test]
    fn expands_tabs_and_drops_trailing_blank_lines() {
        let lines = parse("a\tb\n\n  \n");
        assert_eq!(lines.len(), 1);
        assert_eq!(plain(&lines[0]), "a       b");
    }

    #[test]
    fn highlights_prompts_and_sizes_window() {
        let svg = render(
            "$ kvctl get a\nvalue\n",
            &Options {
                title: "demo".into(),
                width_cols: None,
            },
        );
        let prompt_line = svg.lines().find(|l| l.contains("kvctl get a")).unwrap();
        assert!(prompt_line.contains(&format!(r#"fill="{PROMPT}""#)));
        assert!(prompt_line.contains(r#"xml:space="preserve""#));
        let value_line = svg.lines().find(|l| l.contains(">value<")).unwrap();
        assert!(!value_line.contains(PROMPT));
        assert_eq!(svg.matches("<text x=\"16\"").count(), 2);

        let long = "x".repeat(200);
        let wide = render(&long, &Options::default());
        let cut = render(
            &long,
            &Options {
                title: String::new(),
                width_cols: Some(50),
            },
        );
        assert!(wide.contains(&long));
        assert!(cut.contains(&"x".repeat(50)) && !cut.contains(&"x".repeat(51)));
        let width = |svg: &str| -> f64 {
            let w = svg.split("width=\"").nth(1).unwrap();
            w[..w.find('"').unwrap()].parse().unwrap()
        };
        assert!(width(&wide) > width(&cut));
    }
}
