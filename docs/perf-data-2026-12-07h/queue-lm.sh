M=$HOME/.cache/darkhorse
./ab.sh 3 "--model $M/genesis-5b-q4k --weights q4k -t 2 -p 0 -n 32 -d 4096 -r 2 --no-bandwidth" head lm
./ab.sh 3 "--model $M/genesis-5b-q4k --weights q4k -t 2 -p 0 -n 32 -d 1024 -r 3 --no-bandwidth" head lm
./ab.sh 3 "--model $M/genesis-1b --weights q8 -t 2 -p 0 -n 64 -d 4096 -r 2 --no-bandwidth" head lm
./ab.sh 3 "--model $M/genesis-5b-q4k --weights q4k -t 2 -p 512 -n 0 -d 2048 -r 1 --no-bandwidth" head lm
./ab.sh 3 "--model $M/genesis-1b --weights q8 -t 2 -p 0 -n 32 -b 16 -d 512 -r 2 --no-bandwidth" head lm
./ab.sh 3 "--model $M/genesis-5b-q4k --weights q4k -t 2 -p 0 -n 64 -r 3 --no-bandwidth" head lm
