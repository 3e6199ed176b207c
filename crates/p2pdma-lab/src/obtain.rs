//! Obtaining the kernel a lab command boots: an image given by path, Debian's stock
//! kernel (fetched once), or a lab kernel found in the cache or built from source.

use std::path::PathBuf;
use std::time::Instant;

use crate::check::KernelInfo;
use crate::kernel::{self, BuildEvent, Flavour, KernelError, KernelSource};
use crate::kernel_source::{LabRelease, SourceError};
use crate::stock::{self, StockError, StockRelease};

/// The release built when a [`KernelRequest::Build`] names none.
pub const DEFAULT_BUILD_RELEASE: &str = "6.12";
/// The release fetched when a [`KernelRequest::Stock`] names none.
pub const DEFAULT_STOCK_RELEASE: &str = "7.2";

/// Which kernel to boot, as the user chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelRequest {
    /// This bzImage, booted as it is.
    Image(PathBuf),
    /// The distribution's own kernel of `release` (default [`DEFAULT_STOCK_RELEASE`]).
    Stock {
        /// The release, e.g. `7.2`.
        release: Option<String>,
    },
    /// A lab kernel of `flavour`, from the cache or built.
    Build {
        /// The configuration.
        flavour: Flavour,
        /// A shipped release (default [`DEFAULT_BUILD_RELEASE`]); ignored with `source`.
        release: Option<String>,
        /// A kernel tree or tarball instead of a shipped release.
        source: Option<PathBuf>,
        /// Parallel compile jobs (default: the number of CPUs).
        jobs: Option<usize>,
    },
}

/// The flavour a user named: a lab kernel's configuration, or the distribution's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlavourChoice {
    /// A lab kernel of this configuration, from the cache or built.
    Lab(Flavour),
    /// The distribution's own kernel, downloaded, not built.
    Stock,
}

/// Where the kernel comes from, as the user wrote it (`--kernel`, `--flavour`,
/// `--release`, `--source`); [`KernelChoice::request`] checks it and turns it into a
/// [`KernelRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelChoice {
    /// A bzImage to boot as it is; takes precedence over everything else.
    pub image: Option<PathBuf>,
    /// The flavour (default: the standard lab kernel).
    pub flavour: Option<FlavourChoice>,
    /// The release (default: [`DEFAULT_BUILD_RELEASE`], or [`DEFAULT_STOCK_RELEASE`] for
    /// the stock kernel).
    pub release: Option<String>,
    /// A kernel tree or tarball to build instead of a shipped release.
    pub source: Option<PathBuf>,
}

impl KernelChoice {
    /// The request for this choice; `jobs` is the parallelism of a build. A stock
    /// kernel with a source to build is refused: the two exclude each other.
    pub fn request(&self, jobs: Option<usize>) -> Result<KernelRequest, ObtainError> {
        if let Some(image) = &self.image {
            return Ok(KernelRequest::Image(image.clone()));
        }
        let flavour = match self
            .flavour
            .unwrap_or(FlavourChoice::Lab(Flavour::Standard))
        {
            FlavourChoice::Lab(flavour) => flavour,
            FlavourChoice::Stock => {
                if self.source.is_some() {
                    return Err(ObtainError::StockWithSource);
                }
                return Ok(KernelRequest::Stock {
                    release: self.release.clone(),
                });
            }
        };
        Ok(KernelRequest::Build {
            flavour,
            release: self.release.clone(),
            source: self.source.clone(),
            jobs,
        })
    }

    /// This choice with the stock kernel as its default flavour (what `lab demo` boots),
    /// when it names neither a flavour nor a source and its release, if any, has a stock
    /// kernel.
    pub fn stock_by_default(&self) -> KernelChoice {
        let mut choice = self.clone();
        let stock_release = choice
            .release
            .as_deref()
            .is_none_or(|r| StockRelease::named(r).is_ok());
        if choice.flavour.is_none() && choice.source.is_none() && stock_release {
            choice.flavour = Some(FlavourChoice::Stock);
        }
        choice
    }
}

/// What [`obtain`] reports while it fetches or builds.
pub trait KernelProgress {
    /// A fetch or build begins.
    fn begin(&mut self);
    /// A stage or a line of output of the fetch or build.
    fn event(&mut self, event: BuildEvent);
    /// A line about fetching the source.
    fn note(&mut self, line: &str);
    /// The fetch or build is over; `summary` is empty when there is nothing to say.
    fn finish(&mut self, summary: &str);
}

/// Why no kernel could be obtained.
#[derive(Debug, thiserror::Error)]
pub enum ObtainError {
    /// A stock kernel and a source to build were both asked for.
    #[error("--flavour stock boots the distribution's kernel as it is; --source builds one: choose one of them")]
    StockWithSource,
    /// The image given by path is not a file.
    #[error("kernel image {} not found: pass a bzImage, or omit --kernel to use the lab kernel", path.display())]
    ImageMissing {
        /// The path given.
        path: PathBuf,
    },
    /// Finding or fetching a shipped release's source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Finding or building a lab kernel failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Fetching the stock kernel failed.
    #[error(transparent)]
    Stock(#[from] StockError),
}

/// The kernel `request` names: where its image is, where it came from and what getting
/// it cost. Builds and fetches happen at most once; later calls find the cache.
pub fn obtain(
    request: &KernelRequest,
    progress: &mut dyn KernelProgress,
) -> Result<KernelInfo, ObtainError> {
    let started = Instant::now();
    let (flavour, release, source, jobs) = match request {
        KernelRequest::Image(image) => {
            if !image.is_file() {
                return Err(ObtainError::ImageMissing {
                    path: image.clone(),
                });
            }
            return Ok(KernelInfo {
                image: image.clone(),
                origin: "given with --kernel".to_owned(),
                cache_hit: None,
                build_seconds: 0.0,
                cold_build_seconds: None,
                release: None,
            });
        }
        KernelRequest::Stock { release } => {
            let release = StockRelease::named(release.as_deref().unwrap_or(DEFAULT_STOCK_RELEASE))?;
            progress.begin();
            let stock = stock::ensure(&release, &mut |e| progress.event(e))?;
            if stock.fetched_now {
                progress.finish(&format!(
                    "stock kernel {} fetched and prepared in {:.0} s: {}",
                    stock.kernel_release,
                    stock.seconds,
                    stock.image.display()
                ));
            } else {
                progress.finish("");
            }
            return Ok(KernelInfo {
                origin: format!("Debian's stock kernel {}, not built", stock.kernel_release),
                cache_hit: Some(!stock.fetched_now),
                build_seconds: started.elapsed().as_secs_f64(),
                cold_build_seconds: stock.fetched_now.then_some(stock.seconds),
                release: None,
                image: stock.image,
            });
        }
        KernelRequest::Build {
            flavour,
            release,
            source,
            jobs,
        } => (*flavour, release, source, *jobs),
    };
    let source = match source {
        Some(path) => KernelSource::from_path(path)?,
        None => {
            let release = LabRelease::named(release.as_deref().unwrap_or(DEFAULT_BUILD_RELEASE))?;
            KernelSource::Tarball(release.ensure_tarball(&mut |line| progress.note(line))?)
        }
    };
    if let KernelSource::Tarball(t) = &source {
        if !t.exists() {
            return Err(KernelError::SourceMissing { path: t.clone() }.into());
        }
    }
    if let Some(cached) = kernel::cached(&source, flavour)? {
        return Ok(KernelInfo {
            image: cached.bzimage,
            origin: format!(
                "{flavour} lab kernel {}, built from {}",
                cached.key, cached.source
            ),
            cache_hit: Some(true),
            build_seconds: started.elapsed().as_secs_f64(),
            cold_build_seconds: (cached.build_seconds > 0.0).then_some(cached.build_seconds),
            release: None,
        });
    }
    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    progress.begin();
    let built = kernel::ensure(&source, flavour, jobs, &mut |e| progress.event(e))?;
    progress.finish(&format!(
        "lab kernel built in {:.0} s: {}",
        built.build_seconds,
        built.bzimage.display()
    ));
    Ok(KernelInfo {
        image: built.bzimage,
        origin: format!(
            "{flavour} lab kernel {}, built from {}",
            built.key, built.source
        ),
        cache_hit: Some(false),
        build_seconds: started.elapsed().as_secs_f64(),
        cold_build_seconds: Some(built.build_seconds),
        release: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Silent;
    impl KernelProgress for Silent {
        fn begin(&mut self) {}
        fn event(&mut self, _: BuildEvent) {}
        fn note(&mut self, _: &str) {}
        fn finish(&mut self, _: &str) {}
    }

    #[test]
    fn a_choice_becomes_the_request_it_names() {
        let image = KernelChoice {
            image: Some("/boot/bz".into()),
            flavour: Some(FlavourChoice::Lab(Flavour::Debug)),
            ..KernelChoice::default()
        };
        assert_eq!(
            image.request(None).unwrap(),
            KernelRequest::Image("/boot/bz".into()),
            "an image given by path wins"
        );
        assert_eq!(
            KernelChoice::default().request(Some(3)).unwrap(),
            KernelRequest::Build {
                flavour: Flavour::Standard,
                release: None,
                source: None,
                jobs: Some(3),
            }
        );
        let stock = KernelChoice {
            flavour: Some(FlavourChoice::Stock),
            release: Some("7.2".into()),
            ..KernelChoice::default()
        };
        assert_eq!(
            stock.request(None).unwrap(),
            KernelRequest::Stock {
                release: Some("7.2".into())
            }
        );
        let both = KernelChoice {
            source: Some("/src/linux".into()),
            ..stock
        };
        let err = both.request(None).unwrap_err();
        assert!(matches!(err, ObtainError::StockWithSource), "{err}");
        assert!(err.to_string().contains("choose one of them"), "{err}");
    }

    #[test]
    fn the_stock_kernel_is_the_default_only_when_nothing_else_was_named() {
        let stock = Some(FlavourChoice::Stock);
        assert_eq!(KernelChoice::default().stock_by_default().flavour, stock);
        let with_release = KernelChoice {
            release: Some(DEFAULT_STOCK_RELEASE.into()),
            ..KernelChoice::default()
        };
        assert_eq!(with_release.stock_by_default().flavour, stock);
        let debug = KernelChoice {
            flavour: Some(FlavourChoice::Lab(Flavour::Debug)),
            ..KernelChoice::default()
        };
        assert_eq!(
            debug.stock_by_default().flavour,
            Some(FlavourChoice::Lab(Flavour::Debug))
        );
        let source = KernelChoice {
            source: Some("/src/linux".into()),
            ..KernelChoice::default()
        };
        assert_eq!(source.stock_by_default().flavour, None);
        let no_stock = KernelChoice {
            release: Some("6.12".into()),
            ..KernelChoice::default()
        };
        assert_eq!(
            no_stock.stock_by_default().flavour,
            None,
            "6.12 has no stock kernel: the lab builds it"
        );
    }

    #[test]
    fn a_missing_image_is_reported_with_its_path() {
        let err = obtain(
            &KernelRequest::Image("/nonexistent/bzImage".into()),
            &mut Silent,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/bzImage"), "{err}");
    }
}
