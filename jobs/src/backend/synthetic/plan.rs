//! What one synthetic render draws: the workflow, the lavfi filter graph
//! picked from the prompt and seed, the prompt text overlay and its font.
//! The workflows that start from the user's photo are drawn in `photo`.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Workflow {
    Video,
    Image,
    Broken,
    /// The input photo, filtered, as an image.
    Edit,
    /// The input photo panned and zoomed, as a video.
    Animate,
}

impl Workflow {
    /// The workflow of a model's `workflow` name (the catalogue offers
    /// these: `mage_domain::workflows::SYNTHETIC`).
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            WORKFLOW_VIDEO => Workflow::Video,
            WORKFLOW_IMAGE => Workflow::Image,
            WORKFLOW_BROKEN => Workflow::Broken,
            WORKFLOW_EDIT => Workflow::Edit,
            WORKFLOW_ANIMATE => Workflow::Animate,
            _ => return None,
        })
    }

    /// The kind of media it makes; `None` for either.
    fn makes(self) -> Option<MediaKind> {
        match self {
            Workflow::Video | Workflow::Animate => Some(MediaKind::Video),
            Workflow::Image | Workflow::Edit => Some(MediaKind::Image),
            Workflow::Broken => None,
        }
    }

    /// How many input images the workflow draws from.
    fn inputs(self) -> usize {
        match self {
            Workflow::Edit | Workflow::Animate => 1,
            Workflow::Video | Workflow::Image | Workflow::Broken => 0,
        }
    }
}

/// A validated request turned into an ffmpeg run.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) workflow: Workflow,
    pub(super) kind: MediaKind,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) fps: u32,
    pub(super) seconds: u32,
    pub(super) slowdown: f64,
    pub(super) hash: u64,
    /// The prompt as drawn (wrapped, cut), when a font exists to draw it.
    pub(super) text: Option<String>,
    pub(super) font: Option<&'static Path>,
    pub(super) primary: PathBuf,
    pub(super) duration_us: Option<u64>,
    /// The user's photo as ffmpeg's `file:` input, for the workflows that
    /// take one.
    pub(super) input: Option<std::ffi::OsString>,
    pub(super) prompt: String,
}

impl Plan {
    pub(super) fn new(req: &RenderRequest, slowdown: f64) -> Result<Self, RenderError> {
        let unsupported = |user_message: &str, detail: String| {
            Err(RenderError::Failed { user_message: user_message.to_owned(), detail })
        };
        let Some(workflow) = Workflow::named(&req.workflow) else {
            return unsupported(
                "This model is not available right now.",
                format!(
                    "model {} has workflow {:?}, which the synthetic backend does not know",
                    req.model, req.workflow
                ),
            );
        };
        if workflow.makes().is_some_and(|k| k != req.kind) {
            return unsupported(
                "This model cannot make that kind of media.",
                format!("workflow {} cannot render {:?}", req.workflow, req.kind),
            );
        }
        if req.inputs.len() != workflow.inputs() {
            return unsupported(
                &match workflow.inputs() {
                    0 => "This model does not take input images.".to_owned(),
                    1 => "This model needs exactly one input image.".to_owned(),
                    n => format!("This model needs exactly {n} input images."),
                },
                format!(
                    "workflow {} takes {} input image(s), the request has {}",
                    req.workflow,
                    workflow.inputs(),
                    req.inputs.len()
                ),
            );
        }
        let side_ok = |s: u32| (16..=MAX_SIDE).contains(&s) && s.is_multiple_of(2);
        if !side_ok(req.width) || !side_ok(req.height) {
            return unsupported(
                "This size is not supported.",
                format!("{}x{}: sides must be even and within 16..={MAX_SIDE}", req.width, req.height),
            );
        }
        if !(1..=MAX_FPS).contains(&req.fps) {
            return unsupported(
                "This frame rate is not supported.",
                format!("fps {} not in 1..={MAX_FPS}", req.fps),
            );
        }
        let seconds = match (req.kind, req.duration_seconds) {
            (MediaKind::Image, _) => 0,
            (MediaKind::Video, Some(s)) if (1..=MAX_SECONDS).contains(&s) => s,
            (MediaKind::Video, s) => {
                return unsupported(
                    "This video length is not supported.",
                    format!("duration {s:?} not in 1..={MAX_SECONDS} seconds"),
                );
            }
        };
        let font = font();
        // A moving photo is left as it is: the prompt only steers the motion.
        let text = font
            .filter(|_| workflow != Workflow::Animate)
            .and_then(|_| wrap_prompt(&req.prompt, req.width, req.height));
        let primary = PathBuf::from(if req.kind == MediaKind::Video { VIDEO_FILE } else { IMAGE_FILE });
        let duration_us = (req.kind == MediaKind::Video).then_some(u64::from(seconds) * 1_000_000);
        Ok(Self {
            workflow,
            kind: req.kind,
            width: req.width,
            height: req.height,
            fps: req.fps,
            seconds,
            slowdown,
            hash: prompt_hash(&req.prompt, req.negative_prompt.as_deref(), req.seed),
            text,
            font,
            primary,
            duration_us,
            input: req.inputs.first().map(|p| media::ffmpeg_input(p)).transpose()?,
            prompt: req.prompt.clone(),
        })
    }

    /// The filters after the source: colour, pacing, the prompt.
    pub(super) fn filters(&self) -> String {
        let mut rng = Rng(self.hash ^ 0x5eed);
        let mut chain = Vec::new();
        let hue = rng.below(360);
        let turn = 10 + rng.below(50);
        chain.push(format!("hue=H={hue}*PI/180+t*{turn}*PI/180"));
        chain.extend(self.pacing());
        chain.extend(self.drawtext());
        chain.push("format=yuv420p".to_owned());
        chain.join(",")
    }

    /// `realtime` when renders are slowed down.
    pub(super) fn pacing(&self) -> Option<String> {
        (self.slowdown > 1.0).then(|| format!("realtime=speed={:.4}", 1.0 / self.slowdown))
    }

    /// The prompt in a box at the bottom left, read from [`TEXT_FILE`].
    pub(super) fn drawtext(&self) -> Option<String> {
        let (font, _) = (self.font?, self.text.as_ref()?);
        let size = (self.height / 24).max(12);
        let margin = (self.height / 24).max(8);
        Some(format!(
            "drawtext=fontfile={}:textfile={TEXT_FILE}:expansion=none:fontsize={size}:fontcolor=white\
             :line_spacing={}:box=1:boxcolor=black@0.55:boxborderw={}:x={margin}:y=h-th-{margin}",
            escape_option(&font.to_string_lossy()),
            size / 4,
            size / 3,
        ))
    }

    /// The lavfi source, and the filters that make it presentable (upscale
    /// of the cell sources, tint of the black-and-white ones). Nothing of
    /// the user's text goes in here.
    pub(super) fn source(&self) -> (String, Vec<String>) {
        let (w, h, r) = (self.width, self.height, self.fps);
        let mut rng = Rng(self.hash);
        let seed = rng.below(1 << 31);
        let tint = |rng: &mut Rng| {
            let c = |rng: &mut Rng| 0.35 + rng.below(65) as f64 / 100.0;
            format!("format=rgb24,colorchannelmixer=rr={:.2}:gg={:.2}:bb={:.2}", c(rng), c(rng), c(rng))
        };
        let color = |rng: &mut Rng| format!("0x{:06x}", rng.below(1 << 24));
        // Cells a few pixels wide read as a pattern rather than noise, and
        // compress far better.
        let cells = (w / 4).max(8);
        let cell_rows = (h / 4).max(8);
        let upscale = format!("scale={w}:{h}:flags=neighbor");
        match rng.below(6) {
            0 => {
                const POINTS: &[(f64, f64)] = &[
                    (-0.743_643_887_037_158_7, 0.131_825_904_205_311_97),
                    (-0.761_574, -0.084_759_6),
                    (-1.250_066, 0.020_12),
                    (0.285_015, 0.010_2),
                    (-0.160_7, 1.037_7),
                ];
                let (x, y) = POINTS[rng.below(POINTS.len() as u64) as usize];
                let zoom = 200 + rng.below(400);
                (
                    format!(
                        "mandelbrot=s={w}x{h}:rate={r}:maxiter=256:outer=normalized_iteration_count\
                         :start_x={x}:start_y={y}:start_scale=3:end_scale=0.001:end_pts={zoom}"
                    ),
                    vec![],
                )
            }
            1 => (
                format!(
                    "life=s={cells}x{cell_rows}:rate={r}:seed={seed}:ratio=0.{}:mold=10\
                     :life_color={}:death_color={}:mold_color={}",
                    10 + rng.below(40),
                    color(&mut rng),
                    color(&mut rng),
                    color(&mut rng)
                ),
                vec![upscale],
            ),
            2 => {
                const RULES: &[u64] = &[18, 22, 30, 45, 60, 73, 90, 105, 110, 126, 150, 182];
                let rule = RULES[rng.below(RULES.len() as u64) as usize];
                (
                    format!(
                        "cellauto=s={cells}x{cell_rows}:rate={r}:rule={rule}:seed={seed}:random_fill_ratio=0.5"
                    ),
                    vec![upscale, tint(&mut rng)],
                )
            }
            3 => (
                format!(
                    "gradients=s={w}x{h}:rate={r}:seed={seed}:n={}:speed=0.0{}:c0={}:c1={}:c2={}:c3={}",
                    2 + rng.below(4),
                    1 + rng.below(4),
                    color(&mut rng),
                    color(&mut rng),
                    color(&mut rng),
                    color(&mut rng)
                ),
                vec![],
            ),
            4 => {
                let kind = if rng.below(2) == 0 { "carpet" } else { "triangle" };
                (
                    format!(
                        "sierpinski=s={w}x{h}:rate={r}:seed={seed}:jump={}:type={kind}",
                        1 + rng.below(4)
                    ),
                    vec![tint(&mut rng)],
                )
            }
            _ => (format!("testsrc2=s={w}x{h}:rate={r}"), vec![]),
        }
    }

    pub(super) fn command(&self, work_dir: &Path) -> tokio::process::Command {
        let mut cmd = media::ffmpeg_command(work_dir);
        if self.workflow == Workflow::Broken {
            // A filter ffmpeg does not have: it refuses to start, for real.
            let (w, h, r) = (self.width, self.height, self.fps);
            cmd.args(["-f", "lavfi", "-i", &format!("color=c=black:s={w}x{h}:r={r}")]);
            cmd.args(["-vf", "mage_no_such_filter", "-frames:v", "1"]);
            cmd.arg(&self.primary);
            return cmd;
        }
        if let Some(input) = &self.input {
            return self.photo_command(cmd, input);
        }
        let (source, prepare) = self.source();
        let mut filters = prepare;
        filters.push(self.filters());
        cmd.args(["-f", "lavfi", "-i", &source, "-vf", &filters.join(",")]);
        match self.kind {
            MediaKind::Video => {
                cmd.args(["-t", &self.seconds.to_string()]);
                cmd.args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p"]);
            }
            MediaKind::Image => {
                cmd.args(["-frames:v", "1", "-update", "1"]);
            }
        }
        cmd.arg(&self.primary);
        cmd
    }
}

/// The prompt as drawn: control characters gone, words wrapped to the
/// frame's width, at most as many lines as fit in its lower half (the last
/// one ending in "…" when cut). `None` when nothing is left to draw.
pub(super) fn wrap_prompt(prompt: &str, width: u32, height: u32) -> Option<String> {
    let size = (height / 24).max(12) as usize;
    let margin = (height / 24).max(8) as usize;
    // DejaVu Sans averages about 0.55 em per character; a little more
    // keeps wide letters inside the frame.
    let columns = ((width as usize).saturating_sub(2 * margin) * 10 / (size * 6)).max(8);
    let max_lines = (height as usize * 45 / 100 / (size + size / 4)).max(1);
    let cleaned: String = prompt
        .replace("\r\n", "\n")
        .chars()
        .map(|c| if c == '\t' || c == '\r' { ' ' } else { c })
        .filter(|c| *c == '\n' || !c.is_control())
        .collect();
    let mut lines: Vec<String> = Vec::new();
    for paragraph in cleaned.split('\n') {
        let mut line = String::new();
        for word in paragraph.split(' ').filter(|w| !w.is_empty()) {
            let mut word: Vec<char> = word.chars().collect();
            // Longer than a line: cut it where the line ends.
            while word.len() > columns {
                let room =
                    if line.is_empty() { columns } else { columns.saturating_sub(line.chars().count() + 1) };
                if room == 0 {
                    lines.push(std::mem::take(&mut line));
                    continue;
                }
                if !line.is_empty() {
                    line.push(' ');
                }
                line.extend(word.drain(..room));
                lines.push(std::mem::take(&mut line));
            }
            let needed = line.chars().count() + usize::from(!line.is_empty()) + word.len();
            if needed > columns {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.extend(word);
        }
        lines.push(line);
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    while lines.first().is_some_and(|l| l.is_empty()) {
        lines.remove(0);
    }
    if lines.is_empty() {
        return None;
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            let kept: String = last.chars().take(columns.saturating_sub(1)).collect();
            *last = format!("{}…", kept.trim_end());
        }
    }
    Some(lines.join("\n"))
}

/// Escapes a value for a filter option inside a filtergraph: once for the
/// option parser (`\ ' :`), once more for the graph parser
/// (`\ ' [ ] , ;`), each level undoing one backslash.
pub(super) fn escape_option(value: &str) -> String {
    pub(super) fn level(s: &str, special: &[char]) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if special.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
    level(&level(value, &['\\', '\'', ':']), &['\\', '\'', '[', ']', ',', ';'])
}

/// The font drawtext uses, found once. Without one the prompt is not drawn
/// (Debian's ffmpeg has no default font for drawtext).
pub(super) fn font() -> Option<&'static Path> {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    FONT.get_or_init(|| {
        let found = FONTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| any_font(Path::new("/usr/share/fonts"), 4));
        match &found {
            Some(f) => {
                tracing::debug!(font = %f.display(), "synthetic renders draw the prompt with this font")
            }
            None => tracing::warn!(
                "no TrueType font under /usr/share/fonts: synthetic renders will not show the prompt"
            ),
        }
        found
    })
    .as_deref()
}

pub(super) fn any_font(dir: &Path, depth: u32) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    let is_ttf = |p: &PathBuf| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) && p.is_file();
    if let Some(f) = entries.iter().find(|p| is_ttf(p)) {
        return Some(f.clone());
    }
    if depth == 0 {
        return None;
    }
    entries.iter().filter(|p| p.is_dir()).find_map(|d| any_font(d, depth - 1))
}

/// FNV-1a: stable across Rust versions and platforms, so a prompt and seed
/// look the same on every worker and after every upgrade.
pub(super) fn prompt_hash(prompt: &str, negative: Option<&str>, seed: i64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(prompt.as_bytes());
    eat(&[0xff]);
    eat(negative.unwrap_or("").as_bytes());
    eat(&[0xff]);
    eat(&seed.to_le_bytes());
    h
}

/// splitmix64, for drawing the source's parameters from the hash.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mage_domain::enums::MediaKind as Kind;
    use mage_domain::workflows::SYNTHETIC;

    /// The catalogue admits a synthetic model only on a workflow this
    /// backend draws, with the kind and inputs it draws from.
    #[test]
    fn the_catalogue_lists_exactly_the_workflows_drawn_here() {
        for b in SYNTHETIC {
            let w = Workflow::named(b.name).unwrap_or_else(|| panic!("{} is not drawn here", b.name));
            let makes = w.makes().map(|k| match k {
                MediaKind::Video => Kind::Video,
                MediaKind::Image => Kind::Image,
            });
            assert_eq!(makes, b.makes, "{}", b.name);
            assert_eq!(w.inputs(), b.inputs.len(), "{}", b.name);
            assert!(b.inputs.iter().all(|k| *k == Kind::Image), "{}: photos only", b.name);
        }
        for name in [WORKFLOW_VIDEO, WORKFLOW_IMAGE, WORKFLOW_BROKEN, WORKFLOW_EDIT, WORKFLOW_ANIMATE] {
            assert!(SYNTHETIC.iter().any(|b| b.name == name), "{name} is missing from the catalogue's list");
        }
    }
}
