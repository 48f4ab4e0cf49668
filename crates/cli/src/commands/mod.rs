pub mod dataset;
pub mod generate;
pub mod inspect;
pub mod reference;
pub mod train;
