pub mod dataset;
pub mod eval;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod reference;
pub mod train;
