from flexidit_trt.cli import main

main()
