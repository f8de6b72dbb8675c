"""Label fitting: the LabelFitter LightningModule, its data model, optimisers and catalogue writer."""
