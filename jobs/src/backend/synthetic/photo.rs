//! The workflows that start from the user's photo: `image-edit` (the photo
//! through filters the prompt and seed choose, the prompt drawn on it) and
//! `image-to-video` (the photo panned and zoomed). Nothing of the user's
//! text goes into the filtergraph: words of the prompt only select among
//! fixed filters, and the drawn prompt is read from a file.

use std::ffi::OsStr;

use super::*;

/// Longest side of the canvas a pan/zoom moves over. The canvas is up to
/// twice the output size, so the integer crop zoompan makes moves in half
/// output pixels and the motion does not judder.
const MAX_CANVAS_SIDE: u32 = 4096;

/// `image2` is what ffmpeg picks for a name ending in `.jpg` or `.png`,
/// the pipe demuxers what it picks from the content otherwise.
const PHOTO_DEMUXERS: &str = "image2,jpeg_pipe,png_pipe,webp_pipe";

/// Looks the prompt can ask for by name: its normalised words (lower case,
/// separated by single spaces) matched as whole words or phrases.
const LOOKS: &[(&[&str], &str)] = &[
    (&["black and white", "b w", "grayscale", "greyscale", "monochrome", "noir"], "hue=s=0,eq=contrast=1.25"),
    (
        &["sepia", "vintage", "old photo", "retro", "antique"],
        "colorchannelmixer=.393:.769:.189:0:.349:.686:.168:0:.272:.534:.131,vignette=PI/4",
    ),
    (&["invert", "inverted", "negative"], "negate"),
    (&["sketch", "edges", "outline", "drawing", "pencil"], "edgedetect=mode=colormix:high=0.2:low=0.05"),
    (&["blur", "blurry", "dream", "dreamy", "soft", "haze"], "gblur=sigma=6"),
    (
        &["warm", "warmer", "sunset", "golden", "autumn"],
        "colorbalance=rs=0.25:gs=0.05:bs=-0.2:rm=0.15:bm=-0.1",
    ),
    (&["cold", "cool", "cooler", "winter", "icy", "blue"], "colorbalance=rs=-0.2:bs=0.3:rm=-0.1:bm=0.15"),
    (&["bright", "brighter", "lighter", "sunny"], "eq=brightness=0.12:gamma=1.2"),
    (&["dark", "darker", "night", "moody", "gloomy"], "eq=brightness=-0.12:contrast=1.3,vignette=PI/3"),
    (&["vivid", "saturated", "pop", "colorful", "colourful", "vibrant"], "eq=saturation=1.8:contrast=1.15"),
    (&["mirror", "mirrored", "flip", "flipped"], "hflip"),
    (&["sharp", "sharpen", "sharper", "crisp"], "unsharp=7:7:2.0"),
];

/// At most this many named looks are applied, in the order the table
/// lists them, so a long prompt does not stack every filter.
const MAX_LOOKS: usize = 3;

impl Plan {
    /// ffmpeg reading the photo and writing the primary output. The input
    /// may open files only, and only through the still-image demuxers: a
    /// playlist or a text file in disguise is refused before it can name
    /// another file or be drawn.
    pub(super) fn photo_command(
        &self,
        mut cmd: tokio::process::Command,
        input: &OsStr,
    ) -> tokio::process::Command {
        cmd.args(["-protocol_whitelist", "file", "-format_whitelist", PHOTO_DEMUXERS, "-i"]).arg(input);
        match self.workflow {
            Workflow::Animate => {
                let frames = (self.seconds * self.fps).to_string();
                cmd.args(["-vf", &self.animate_filters(), "-frames:v", &frames]);
                cmd.args(["-t", &self.seconds.to_string()]);
                cmd.args(["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p"]);
            }
            _ => {
                cmd.args(["-vf", &self.edit_filters(), "-frames:v", "1", "-update", "1"]);
            }
        }
        cmd.arg(&self.primary);
        cmd
    }

    /// The photo covering the requested size, then its looks and the prompt.
    pub(super) fn edit_filters(&self) -> String {
        let mut chain = vec![cover(self.width, self.height)];
        chain.extend(looks(&self.prompt, self.hash));
        chain.extend(self.pacing());
        chain.extend(self.drawtext());
        chain.join(",")
    }

    /// The photo on a canvas up to twice the output size, zoomed in towards
    /// a point over the whole clip with an ease in and out. The first frame
    /// is the whole canvas: the photo as the user sent it.
    pub(super) fn animate_filters(&self) -> String {
        let (w, h, fps) = (self.width, self.height, self.fps);
        let frames = (self.seconds * self.fps).max(1);
        let mut rng = Rng(self.hash ^ 0x200a);
        let scale = (f64::from(MAX_CANVAS_SIDE) / f64::from(w.max(h))).clamp(1.0, 2.0);
        let even = |side: u32| ((f64::from(side) * scale / 2.0).round() as u32 * 2).max(2);
        let (cw, ch) = (even(w), even(h));
        let zoom = 0.15 + rng.below(26) as f64 / 100.0;
        // Where the zoom ends up: the centre, a third or an edge.
        const TARGETS: &[f64] = &[0.5, 0.5, 0.3, 0.7, 0.15, 0.85];
        let px = TARGETS[rng.below(TARGETS.len() as u64) as usize];
        let py = TARGETS[rng.below(TARGETS.len() as u64) as usize];
        // Only the still's first frame: a video given as the photo would
        // otherwise make `frames` frames out of each of its frames.
        let mut chain = vec![
            "trim=end_frame=1".to_owned(),
            cover(cw, ch),
            format!(
                "zoompan=z='1+{zoom:.2}*(1-cos(PI*on/{frames}))/2':x='(iw-iw/zoom)*{px}':y='(ih-ih/zoom)*{py}'\
                 :d={frames}:s={w}x{h}:fps={fps}"
            ),
        ];
        chain.extend(self.pacing());
        chain.push("format=yuv420p".to_owned());
        chain.join(",")
    }
}

/// Scales to cover `w`×`h` and crops the overflow evenly from both sides.
fn cover(w: u32, h: u32) -> String {
    format!("scale={w}:{h}:force_original_aspect_ratio=increase,crop={w}:{h},setsar=1")
}

/// The looks the prompt names; when it names none, a strong one drawn from
/// the hash. Then a small seed-driven tweak of contrast and saturation, so
/// two seeds of one prompt differ.
pub(super) fn looks(prompt: &str, hash: u64) -> Vec<String> {
    let words: String =
        prompt.to_lowercase().chars().map(|c| if c.is_alphanumeric() { c } else { ' ' }).collect();
    let words = format!(" {} ", words.split_whitespace().collect::<Vec<_>>().join(" "));
    let mut chain: Vec<String> = LOOKS
        .iter()
        .filter(|(names, _)| names.iter().any(|n| words.contains(&format!(" {n} "))))
        .take(MAX_LOOKS)
        .map(|(_, filter)| (*filter).to_owned())
        .collect();
    let mut rng = Rng(hash ^ 0xed17);
    if chain.is_empty() {
        chain.push(match rng.below(6) {
            0 => format!("hue=h={}:s={:.2}", 90 + rng.below(181), 1.1 + rng.below(50) as f64 / 100.0),
            1 => "negate".to_owned(),
            2 => "edgedetect=mode=colormix:high=0.2:low=0.05".to_owned(),
            3 => LOOKS[1].1.to_owned(),
            4 => LOOKS[5].1.to_owned(),
            _ => LOOKS[6].1.to_owned(),
        });
    }
    chain.push(format!(
        "eq=contrast={:.2}:saturation={:.2}",
        1.0 + rng.below(21) as f64 / 100.0,
        0.9 + rng.below(41) as f64 / 100.0
    ));
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_looks_are_whole_words_and_otherwise_the_hash_picks_one() {
        let first = |p: &str| looks(p, 1).first().cloned().unwrap_or_default();
        assert_eq!(first("Make it BLACK-and-white!"), LOOKS[0].1);
        assert_eq!(first("invert the colours"), "negate");
        // "nice" holds "ice" and "blueprint" holds "blue", neither is a look.
        let unnamed = looks("a nice blueprint", 1);
        assert_eq!(unnamed.len(), 2, "{unnamed:?}");
        assert!(!LOOKS.iter().any(|(n, _)| n.contains(&"nice")));
        let many = looks("sepia invert sketch blur warm dark", 1);
        assert_eq!(many.len(), MAX_LOOKS + 1, "{many:?}");
        assert_ne!(looks("x", 1), looks("x", 2), "the seed changes the tweak");
    }
}
