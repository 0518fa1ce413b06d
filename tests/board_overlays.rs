//! The board's device-tree overlays: each compiles with `dtc -@` without a warning, and applied
//! with `fdtoverlay` to a model of the BCM2711 tree they give the properties the box relies on.
//! Also checks that config.txt loads exactly the overlays that exist, and the wiring documents.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn board() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("board")
}

fn tools_present() -> bool {
    let missing: Vec<&str> = ["dtc", "fdtoverlay", "fdtget"]
        .into_iter()
        .filter(|t| {
            Command::new(t)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CRADLE_REQUIRE_PEERS").is_some() {
        panic!("CRADLE_REQUIRE_PEERS is set but {missing:?} are missing (apt-get install device-tree-compiler)");
    }
    eprintln!(
        "skipping: {} not installed (device-tree-compiler)",
        missing.join(", ")
    );
    false
}

/// The nodes our overlays target, at the paths Debian's bcm2711-rpi-4-b.dtb and Raspberry Pi's
/// own tree both use; SPI0 and I2C1 start disabled, as in Debian's tree.
const MODEL_BASE: &str = r#"/dts-v1/;
/ {
	compatible = "raspberrypi,4-model-b", "brcm,bcm2711";
	#address-cells = <2>;
	#size-cells = <1>;
	soc {
		#address-cells = <1>;
		#size-cells = <1>;
		gpio@7e200000 {
			compatible = "brcm,bcm2711-gpio";
			reg = <0x7e200000 0xb4>;
			gpio-controller;
			#gpio-cells = <2>;
		};
		spi@7e204000 {
			compatible = "brcm,bcm2835-spi";
			reg = <0x7e204000 0x200>;
			#address-cells = <1>;
			#size-cells = <0>;
			status = "disabled";
		};
		i2c@7e804000 {
			compatible = "brcm,bcm2835-i2c";
			reg = <0x7e804000 0x1000>;
			#address-cells = <1>;
			#size-cells = <0>;
			clock-frequency = <100000>;
			status = "disabled";
		};
	};
};
"#;

fn overlay_sources() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(board().join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dts"))
        .collect();
    v.sort();
    v
}

/// `dtc -@ -I dts -O dtb`; fails on any warning, since the firmware is less forgiving than dtc.
fn compile(src: &Path, out: &Path) {
    let o = Command::new("dtc")
        .args(["-@", "-I", "dts", "-O", "dtb", "-o"])
        .arg(out)
        .arg(src)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "dtc failed on {}:\n{err}",
        src.display()
    );
    assert!(
        err.trim().is_empty(),
        "dtc warned on {}:\n{err}",
        src.display()
    );
}

fn fdtget(dtb: &Path, node: &str, prop: &str, ty: &str) -> String {
    let o = Command::new("fdtget")
        .args(["-t", ty])
        .arg(dtb)
        .args([node, prop])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fdtget {node} {prop}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn compiled(dir: &Path) -> (PathBuf, PathBuf) {
    let base_src = dir.join("base.dts");
    std::fs::write(&base_src, MODEL_BASE).unwrap();
    let base = dir.join("base.dtb");
    compile(&base_src, &base);
    let i2c = dir.join("cradle-i2c1-400k.dtbo");
    let tpm = dir.join("cradle-tpm-slb9670.dtbo");
    compile(&board().join("overlays/cradle-i2c1-400k.dts"), &i2c);
    compile(&board().join("overlays/cradle-tpm-slb9670.dts"), &tpm);
    (base, dir.to_path_buf())
}

#[test]
fn every_overlay_compiles_without_warnings() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sources = overlay_sources();
    assert_eq!(sources.len(), 2, "{sources:?}");
    for src in sources {
        let out = dir
            .path()
            .join(src.file_stem().unwrap())
            .with_extension("dtbo");
        compile(&src, &out);
        // An overlay: fragments and a __fixups__/__local_fixups__ section for the firmware.
        let dts = Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts"])
            .arg(&out)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&dts.stdout);
        assert!(text.contains("__overlay__"), "{}", src.display());
        assert!(
            text.contains("__local_fixups__"),
            "{}: pinctrl phandle not fixed up",
            src.display()
        );
    }
}

#[test]
fn overlays_apply_to_the_bcm2711_tree() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (base, d) = compiled(dir.path());
    let out = d.join("applied.dtb");
    let o = Command::new("fdtoverlay")
        .arg("-i")
        .arg(&base)
        .arg("-o")
        .arg(&out)
        .arg(d.join("cradle-i2c1-400k.dtbo"))
        .arg(d.join("cradle-tpm-slb9670.dtbo"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fdtoverlay: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // I2C1: on, 400 kHz, pins GPIO2/3 in ALT0.
    let i2c = "/soc/i2c@7e804000";
    assert_eq!(fdtget(&out, i2c, "status", "s"), "okay");
    assert_eq!(fdtget(&out, i2c, "clock-frequency", "u"), "400000");
    let pins = "/soc/gpio@7e200000/cradle_i2c1_pins";
    assert_eq!(fdtget(&out, pins, "brcm,pins", "u"), "2 3");
    assert_eq!(fdtget(&out, pins, "brcm,function", "u"), "4");
    assert_eq!(
        fdtget(&out, i2c, "pinctrl-0", "u"),
        fdtget(&out, pins, "phandle", "u")
    );

    // SPI0: on, the TPM at chip select 1 with the compatible tpm_tis_spi binds to.
    let spi = "/soc/spi@7e204000";
    assert_eq!(fdtget(&out, spi, "status", "s"), "okay");
    let tpm = "/soc/spi@7e204000/tpm@1";
    let compat = fdtget(&out, tpm, "compatible", "s");
    assert!(
        compat.split_whitespace().next() == Some("infineon,slb9670"),
        "{compat}"
    );
    assert_eq!(fdtget(&out, tpm, "reg", "u"), "1");
    assert_eq!(fdtget(&out, tpm, "spi-max-frequency", "u"), "32000000");
    let spins = "/soc/gpio@7e200000/cradle_spi0_pins";
    assert_eq!(fdtget(&out, spins, "brcm,pins", "u"), "7 8 9 10 11");
    assert_eq!(
        fdtget(&out, spi, "pinctrl-0", "u"),
        fdtget(&out, spins, "phandle", "u")
    );
}

#[test]
fn overlay_refuses_a_tree_without_its_target() {
    // A Pi 5 (RP1) or any other tree has no /soc/spi@7e204000: applying must fail, not half-apply.
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, d) = compiled(dir.path());
    let other_src = d.join("other.dts");
    std::fs::write(
        &other_src,
        MODEL_BASE.replace("spi@7e204000", "spi@1f00050000"),
    )
    .unwrap();
    let other = d.join("other.dtb");
    compile(&other_src, &other);
    let st = Command::new("fdtoverlay")
        .arg("-i")
        .arg(&other)
        .arg("-o")
        .arg(d.join("x.dtb"))
        .arg(d.join("cradle-tpm-slb9670.dtbo"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success());
}

#[test]
fn config_txt_loads_the_overlays_that_exist() {
    let text = std::fs::read_to_string(board().join("config.txt")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for want in ["dtparam=i2c_arm=on", "dtparam=i2c_arm_baudrate=400000"] {
        assert!(lines.contains(&want), "config.txt lacks {want}");
    }
    let overlays: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("dtoverlay="))
        .collect();
    assert_eq!(overlays, ["cradle-i2c1-400k", "cradle-tpm-slb9670"]);
    for o in overlays {
        assert!(
            board().join("overlays").join(format!("{o}.dts")).is_file(),
            "no source for {o}"
        );
    }
}

#[test]
fn wiring_documents_agree() {
    let md = std::fs::read_to_string(board().join("WIRING.md")).unwrap();
    let svg = std::fs::read_to_string(board().join("wiring.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    // OLED and TPM pin assignments, as in the table rows and the drawing's legend.
    for row in [
        "| VCC | 1 | 3V3 |",
        "| GND | 6 | GND |",
        "| SDA | 3 | GPIO2 (I2C1 SDA) |",
        "| SCL | 5 | GPIO3 (I2C1 SCL) |",
        "| CS# | 26 | GPIO7 (SPI0 CE1) |",
        "| MOSI | 19 | GPIO10 (SPI0 MOSI) |",
        "| MISO | 21 | GPIO9 (SPI0 MISO) |",
        "| SCLK | 23 | GPIO11 (SPI0 SCLK) |",
    ] {
        assert!(md.contains(row), "WIRING.md lacks {row}");
    }
    for legend in [
        "VCC 1, SDA 3 (GPIO2), SCL 5 (GPIO3), GND 6",
        "VCC 17, MOSI 19, MISO 21, SCLK 23, GND 25, CS# 26 (GPIO7, CE1)",
    ] {
        assert!(svg.contains(legend), "wiring.svg lacks {legend}");
    }
    assert!(md.contains("| GND | 25 | GND |") && md.contains("| VCC (3.3 V) | 17 | 3V3 |"));
}
