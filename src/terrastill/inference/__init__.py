"""The deploy stage: sliding-window prediction over areas of interest, written as COGs."""
