//! A loss-curve image for training runs: training loss as a line, validation loss as dots,
//! on a grid with one line per unit of loss (nats). No text, so no font is needed.

use std::path::Path;

const WIDTH: usize = 800;
const HEIGHT: usize = 400;
const MARGIN: usize = 20;

/// Draws `train` (step, loss) and `valid` (step, loss) to a PNG at `path` (atomically).
pub fn write_loss_curve(
    path: &Path,
    train: &[(usize, f32)],
    valid: &[(usize, f32)],
) -> std::io::Result<()> {
    let mut pixels = vec![255u8; WIDTH * HEIGHT * 3];
    let points = train.iter().chain(valid).filter(|(_, l)| l.is_finite());
    let max_step = points.clone().map(|p| p.0).max().unwrap_or(1).max(1) as f32;
    let max_loss = points.map(|p| p.1).fold(0.0f32, f32::max).ceil().max(1.0);
    let x = |step: usize| MARGIN as f32 + (WIDTH - 2 * MARGIN) as f32 * step as f32 / max_step;
    let y = |loss: f32| {
        (HEIGHT - MARGIN) as f32 - (HEIGHT - 2 * MARGIN) as f32 * (loss / max_loss).clamp(0.0, 1.0)
    };
    let mut put = |px: f32, py: f32, rgb: [u8; 3]| {
        let (px, py) = (px.round() as isize, py.round() as isize);
        if px >= 0 && py >= 0 && (px as usize) < WIDTH && (py as usize) < HEIGHT {
            let i = (py as usize * WIDTH + px as usize) * 3;
            pixels[i..i + 3].copy_from_slice(&rgb);
        }
    };
    // Grid: one horizontal line per nat, and the axes.
    for level in 0..=max_loss as usize {
        for px in MARGIN..WIDTH - MARGIN {
            put(
                px as f32,
                y(level as f32),
                if level == 0 {
                    [0, 0, 0]
                } else {
                    [220, 220, 220]
                },
            );
        }
    }
    for py in MARGIN..=HEIGHT - MARGIN {
        put(MARGIN as f32, py as f32, [0, 0, 0]);
    }
    // Training loss: connected line.
    for pair in train.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if !(a.1.is_finite() && b.1.is_finite()) {
            continue;
        }
        let (x0, y0, x1, y1) = (x(a.0), y(a.1), x(b.0), y(b.1));
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f32 / n as f32;
            put(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, [40, 90, 200]);
        }
    }
    // Validation loss: 5x5 red dots.
    for &(step, loss) in valid.iter().filter(|(_, l)| l.is_finite()) {
        for dx in -2..=2 {
            for dy in -2..=2 {
                put(x(step) + dx as f32, y(loss) + dy as f32, [210, 40, 40]);
            }
        }
    }
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, WIDTH as u32, HEIGHT as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&pixels)
            .map_err(std::io::Error::other)?;
    }
    rwkv_burn::safetensors_io::write_atomic(path, &bytes).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let train: Vec<(usize, f32)> = (1..100).map(|s| (s, 5.0 / (s as f32).sqrt())).collect();
        write_loss_curve(&path, &train, &[(50, 1.0), (99, 0.6)]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (800, 400));
    }
}
